#!/usr/bin/env bash
# Checks that the npm package works through a bundler: builds the package (scripts/build-pkg.sh,
# dev profile unless PKG_DIR points at a built one), installs it with Vite into this folder and
# runs `vite build`; the bundle must hold the wasm module as an emitted asset, and the built
# page, served on 127.0.0.1, must instantiate it in headless Chromium (playwright-core from
# tests/e2e).
#   bash tests/bundler/run.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PKG_DIR="${PKG_DIR:-$ROOT/target/bundler-pkg}"
if [[ ! -f $PKG_DIR/package.json ]]; then bash scripts/build-pkg.sh "$PKG_DIR" --dev; fi
cd tests/bundler
npm install --no-audit --no-fund --loglevel=error --no-save "$PKG_DIR" vite@7.3.8
rm -rf dist
npx vite build --logLevel warn
ls dist/assets | grep -q '\.wasm$' || { echo "bundler: no .wasm asset in dist/assets" >&2; exit 1; }
# Minifiers rename classes, not the wasm export names the glue calls.
grep -lq "webgpustreaminginference_new" dist/assets/*.js || { echo "bundler: class missing from the bundle" >&2; exit 1; }
if [[ ! -d ../e2e/node_modules/playwright-core ]]; then
    (cd ../e2e && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
fi
PORT="${PORT:-8091}"
python3 "$ROOT/scripts/serve.py" --port "$PORT" --dir dist --quiet &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$PORT/" >/dev/null && break; sleep 0.1; done
BUNDLE_URL="http://127.0.0.1:$PORT/" node check.mjs
echo "bundler: passed ($(ls dist/assets | tr '\n' ' '))"
