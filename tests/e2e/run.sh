#!/usr/bin/env bash
# Runs the demo-page e2e test: builds the package into www/pkg (dev profile unless
# WSI_E2E_RELEASE=1), links the model into www/models, serves www on 127.0.0.1:$PORT,
# installs playwright-core (no browser download: it drives /usr/bin/chromium) and runs
# demo.test.mjs. The screenshot lands in tests/e2e/out/demo.png.
#   bash tests/e2e/run.sh [--no-build]      PORT (default 8090)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PORT="${PORT:-8090}"
if [[ "${1:-}" != --no-build ]]; then
    if [[ "${WSI_E2E_RELEASE:-0}" == 1 ]]; then bash scripts/build-pkg.sh www/pkg; else bash scripts/build-pkg.sh www/pkg --dev; fi
fi
MODEL=SmolLM2-135M-Instruct.Q4_1.gguf
[[ -f models/$MODEL ]] || bash scripts/fetch-model.sh
mkdir -p www/models
[[ -e www/models/$MODEL ]] || ln -s "$(cd models && pwd -P)/$MODEL" "www/models/$MODEL"
python3 scripts/serve.py --port "$PORT" --dir www --quiet &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$PORT/" >/dev/null && break; sleep 0.1; done
cd tests/e2e
if [[ ! -d node_modules/playwright-core ]]; then
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error
fi
DEMO_URL="http://127.0.0.1:$PORT/" node demo.test.mjs
