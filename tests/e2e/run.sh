#!/usr/bin/env bash
# Runs the demo-page e2e test: builds the package into www/pkg (dev profile unless
# WSI_E2E_RELEASE=1), links the model into www/models, serves www on 127.0.0.1:$PORT,
# installs playwright-core (no browser download: it drives /usr/bin/chromium) and runs
# demo.test.mjs. The screenshot lands in tests/e2e/out/demo.png. Then demo_ws.test.mjs:
# the same page served by `wsi serve` (native, lavapipe) with its WebSocket backend.
#   bash tests/e2e/run.sh [--no-build]      PORT (default 8090), WS_PORT (default 8092)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PORT="${PORT:-8090}"
WS_PORT="${WS_PORT:-8092}"
if [[ "${1:-}" != --no-build ]]; then
    if [[ "${WSI_E2E_RELEASE:-0}" == 1 ]]; then bash scripts/build-pkg.sh www/pkg; else bash scripts/build-pkg.sh www/pkg --dev; fi
fi
MODEL=SmolLM2-135M-Instruct.Q4_1.gguf
[[ -f models/$MODEL ]] || bash scripts/fetch-model.sh
mkdir -p www/models
[[ -e www/models/$MODEL ]] || ln -s "$(cd models && pwd -P)/$MODEL" "www/models/$MODEL"
python3 scripts/serve.py --port "$PORT" --dir www --quiet &
SERVER=$!
WSI=""
trap 'kill "$SERVER" $WSI 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$PORT/" >/dev/null && break; sleep 0.1; done
# `wsi serve` for demo_ws.test.mjs (native wgpu: lavapipe unless a Vulkan driver is chosen).
cargo build --bin wsi
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
if [[ -z ${VK_DRIVER_FILES:-} ]]; then
    VK_DRIVER_FILES="$(ls /usr/share/vulkan/icd.d/lvp_icd.*.json 2>/dev/null | head -n1 || true)"
    export VK_DRIVER_FILES WGPU_BACKEND="${WGPU_BACKEND:-vulkan}"
fi
"$TARGET_DIR/debug/wsi" --model "models/$MODEL" --quantization fp32 serve --port "$WS_PORT" --www www &
WSI=$!
for _ in $(seq 600); do curl -sf "http://127.0.0.1:$WS_PORT/" >/dev/null && break; sleep 0.1; done
cd tests/e2e
if [[ ! -d node_modules/playwright-core ]]; then
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error
fi
DEMO_URL="http://127.0.0.1:$PORT/" node demo.test.mjs
DEMO_WS_URL="http://127.0.0.1:$WS_PORT/" node demo_ws.test.mjs
