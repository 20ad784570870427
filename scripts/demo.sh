#!/usr/bin/env bash
# The demo: builds the package into www/pkg, fetches the SmolLM2 model, serves www (with
# the model under www/models) on 127.0.0.1 and prints the URL.
#   bash scripts/demo.sh [--port 8080] [--dev] [--no-build]
# Open the URL in a browser with WebGPU (Chrome/Edge 113+, Firefox 141+ or with
# dom.webgpu.enabled, Safari 26+). Ctrl-C stops the server.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PORT=8080
BUILD_ARGS=()
BUILD=1
while (($#)); do
    case "$1" in
        --port) PORT="$2"; shift ;;
        --dev) BUILD_ARGS+=(--dev) ;;
        --no-build) BUILD=0 ;;
        -h | --help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "demo.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
if ((BUILD)); then
    # Installs what the build needs (wasm target, wasm-pack, wasm-bindgen-cli; skipped when present).
    bash scripts/setup.sh
    bash scripts/build-pkg.sh www/pkg "${BUILD_ARGS[@]}"
fi
[[ -f www/pkg/wsi.js ]] || { echo "demo.sh: www/pkg is missing; run without --no-build" >&2; exit 1; }
bash scripts/fetch-model.sh
mkdir -p www/models
MODEL=SmolLM2-135M-Instruct.Q4_1.gguf
SRC="$(cd models && pwd -P)/$MODEL"
if [[ ! -e www/models/$MODEL ]]; then
    ln -s "$SRC" "www/models/$MODEL" 2>/dev/null || cp "$SRC" "www/models/$MODEL"
fi
echo
echo "demo: http://127.0.0.1:$PORT/"
echo "      (model: www/models/$MODEL; ?autoload loads it at once; Ctrl-C stops)"
exec python3 scripts/serve.py --port "$PORT" --dir www
