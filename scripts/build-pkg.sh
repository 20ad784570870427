#!/usr/bin/env bash
# Builds the npm package: wasm-pack build --target web, then merges pkg.json (name,
# version, description, keywords, license, exports, types) into the generated package.json.
#   bash scripts/build-pkg.sh [OUT_DIR] [--dev]     (default OUT_DIR: pkg)
# Set WSI_WASM_OPT=1 to run wasm-opt (wasm-pack downloads binaryen; off by default so the
# build works offline).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
OUT="pkg"
PROFILE="--release"
for arg in "$@"; do
    case "$arg" in
        --dev) PROFILE="--dev" ;;
        -*) echo "build-pkg.sh: unknown option $arg" >&2; exit 2 ;;
        *) OUT="$arg" ;;
    esac
done
case "$OUT" in /*) ;; *) OUT="$ROOT/$OUT" ;; esac
OPT=(--no-opt)
if [[ "${WSI_WASM_OPT:-0}" == 1 ]]; then OPT=(); fi
# The CLI feature (clap, indicatif) is native only; the library needs no default features.
wasm-pack build --target web "$PROFILE" "${OPT[@]}" --out-dir "$OUT" --out-name wsi -- --no-default-features
python3 - "$ROOT/pkg.json" "$OUT/package.json" <<'PY'
import json, sys
meta_path, pkg_path = sys.argv[1], sys.argv[2]
meta = json.load(open(meta_path))
pkg = json.load(open(pkg_path))
files = set(pkg.get("files", [])) | set(meta.get("files", []))
pkg.update(meta)
pkg["files"] = sorted(files)
json.dump(pkg, open(pkg_path, "w"), indent=2)
open(pkg_path, "a").write("\n")
print(f"build-pkg: {pkg['name']}@{pkg['version']} in {pkg_path.rsplit('/', 1)[0]}")
PY
