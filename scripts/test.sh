#!/usr/bin/env bash
# The project's single test command (CI runs it through .ci/run):
#   bash scripts/test.sh              # everything, in this order:
#     setup    scripts/setup.sh (system packages, wasm target, wasm-bindgen-cli, wasm-pack, geckodriver)
#     model    scripts/fetch-model.sh (SmolLM2-135M-Instruct Q4_1 GGUF into models/)
#     native   cargo test, on Mesa's lavapipe Vulkan driver
#     lint     cargo clippy --all-targets -D warnings (native and wasm32), cargo fmt --check
#     wasm     cargo build --lib --target wasm32-unknown-unknown
#     browser  wasm-pack test --headless --chrome --firefox (WebGPU flags: webdriver.json),
#              with the model served over HTTP by scripts/serve.py on 127.0.0.1:8089 and the
#              WebSocket peer of tests/web_websocket.rs (examples/ws_peer.rs) on 127.0.0.1:8091
#     e2e      tests/e2e/run.sh: the demo page driven by Playwright in headless Chromium
#     bench    scripts/bench-browser.py: the bench page (www/bench.html) in Chromium and Firefox
#              through WebDriver, 4 tokens (a smoke run: it must print its JSON)
#     bundler  tests/bundler/run.sh: the npm package imported through Vite, the bundle run in Chromium
# Options pick phases instead (any combination): --setup --model --native --lint --wasm --browser --e2e --bench --bundler
#   --no-setup   run the chosen phases (default: all) without the setup phase
# Ends with each phase's duration and the summed counts of the cargo/wasm-bindgen test runners.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

ALL_PHASES=(setup model native lint wasm browser e2e bench bundler)
PHASES=()
NO_SETUP=0
usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; }
for arg in "$@"; do
    case "$arg" in
        --setup | --model | --native | --lint | --wasm | --browser | --e2e | --bench | --bundler) PHASES+=("${arg#--}") ;;
        --no-setup) NO_SETUP=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "test.sh: unknown option $arg" >&2; usage >&2; exit 2 ;;
    esac
done
if ((${#PHASES[@]} == 0)); then PHASES=("${ALL_PHASES[@]}"); fi
if ((NO_SETUP)); then
    kept=()
    for p in "${PHASES[@]}"; do [[ $p == setup ]] || kept+=("$p"); done
    PHASES=("${kept[@]}")
fi
wants() { local p; for p in "${PHASES[@]}"; do [[ $p == "$1" ]] && return 0; done; return 1; }

LOG_DIR="$(mktemp -d "${TMPDIR:-/tmp}/wsi-test.XXXXXX")"
TIMINGS=()
CURRENT=""
START_ALL=$(date +%s)

# Sum every "test result:" line of the runners' output (cargo test, wasm-bindgen-test-runner).
counts() {
    cat "$LOG_DIR"/*.log 2>/dev/null | grep -E '^test result: ' | awk '
        { for (i = 1; i <= NF; i++) {
              if ($(i) ~ /^passed;?$/) p += $(i - 1)
              if ($(i) ~ /^failed;?$/) f += $(i - 1)
              if ($(i) ~ /^ignored;?$/) s += $(i - 1) } }
        END { printf "%d %d %d\n", p, f, s }'
}

MODEL_SERVER=""
WS_PEER=""
finish() {
    local rc=$?
    if [[ -n $MODEL_SERVER ]]; then kill "$MODEL_SERVER" 2>/dev/null || true; fi
    if [[ -n $WS_PEER ]]; then kill "$WS_PEER" 2>/dev/null || true; fi
    echo
    echo "==> durations"
    local t
    for t in "${TIMINGS[@]}"; do echo "    $t"; done
    if [[ -n $CURRENT ]]; then echo "    $CURRENT: FAILED (rc=$rc)"; fi
    echo "    total: $(($(date +%s) - START_ALL))s"
    read -r passed failed skipped < <(counts)
    if ((failed == 0 && rc != 0)); then failed=1; fi
    rm -rf "$LOG_DIR"
    echo
    if ((skipped > 0)); then
        echo "total: $passed passed, $failed failed, $skipped skipped"
    else
        echo "total: $passed passed, $failed failed"
    fi
    exit "$rc"
}
trap finish EXIT

# phase NAME COMMAND...: run COMMAND, timed, its output shown and kept for the summary.
phase() {
    local name=$1 start
    shift
    CURRENT=$name
    echo
    echo "==> [$name] $*"
    start=$(date +%s)
    "$@" 2>&1 | tee -a "$LOG_DIR/$name.log"
    TIMINGS+=("$name: $(($(date +%s) - start))s")
    CURRENT=""
}

# wgpu's Vulkan backend on Mesa's lavapipe (software), the only Vulkan device CI has.
use_lavapipe() {
    local icd
    icd="$(ls /usr/share/vulkan/icd.d/lvp_icd.*.json 2>/dev/null | head -n1 || true)"
    if [[ -z $icd ]]; then
        echo "test.sh: lavapipe ICD not found in /usr/share/vulkan/icd.d (mesa-vulkan-drivers)" >&2
        exit 1
    fi
    export VK_DRIVER_FILES="$icd" VK_ICD_FILENAMES="$icd" WGPU_BACKEND="${WGPU_BACKEND:-vulkan}"
    echo "test.sh: VK_DRIVER_FILES=$icd WGPU_BACKEND=$WGPU_BACKEND"
    if command -v vulkaninfo >/dev/null; then
        vulkaninfo --summary 2>/dev/null | grep -E 'deviceName|driverInfo|apiVersion' || true
    fi
}

if wants setup; then phase setup bash scripts/setup.sh; fi
if wants model; then
    [[ -f scripts/fetch-model.sh ]] || { echo "test.sh: scripts/fetch-model.sh is missing" >&2; exit 1; }
    phase model bash scripts/fetch-model.sh
fi
if wants native; then
    use_lavapipe
    phase native cargo test
fi
if wants lint; then
    phase clippy cargo clippy --all-targets -- -D warnings
    phase clippy-wasm cargo clippy --all-targets --target wasm32-unknown-unknown -- -D warnings
    phase fmt cargo fmt --check
fi
if wants wasm; then phase wasm cargo build --lib --target wasm32-unknown-unknown; fi
if wants browser; then
    # Chromium: WebGPU on SwiftShader; Firefox: WebGPU on lavapipe (flags and prefs in webdriver.json).
    # --nocapture shows what the tests log (adapter features and limits) for passing tests too.
    # wasm-bindgen-test-runner gives each test binary's whole suite 20 s per browser by default;
    # model tests on software GPUs need far longer.
    export WASM_BINDGEN_TEST_TIMEOUT="${WASM_BINDGEN_TEST_TIMEOUT:-900}"
    # The browser tests load the real model over HTTP (WSI_TEST_MODEL_URL, default below).
    [[ -f models/SmolLM2-135M-Instruct.Q4_1.gguf ]] || bash scripts/fetch-model.sh
    python3 scripts/serve.py --port 8089 --dir models --quiet &
    MODEL_SERVER=$!
    for _ in $(seq 100); do
        curl -sf -r 0-0 -o /dev/null http://127.0.0.1:8089/SmolLM2-135M-Instruct.Q4_1.gguf && break
        sleep 0.1
    done
    # The peer checks what streamWebsocket sends and reports through the close code.
    cargo build --example ws_peer
    target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
    "$target_dir/debug/examples/ws_peer" --port 8091 &
    WS_PEER=$!
    for _ in $(seq 100); do
        (exec 3<>/dev/tcp/127.0.0.1/8091) 2>/dev/null && break
        sleep 0.1
    done
    phase browser wasm-pack test --headless --chrome --firefox -- -- --nocapture
    kill "$MODEL_SERVER" "$WS_PEER" 2>/dev/null || true
    MODEL_SERVER=""
    WS_PEER=""
fi
if wants e2e; then phase e2e bash tests/e2e/run.sh; fi
# Reuses the package the e2e phase built into www/pkg when it is there.
if wants bench; then
    [[ -f www/pkg/wsi.js ]] || bash scripts/build-pkg.sh www/pkg --dev
    phase bench python3 scripts/bench-browser.py --tokens 4 --runs 1
fi
# Reuses the package the e2e phase built into www/pkg when it is there.
if wants bundler; then
    if [[ -f www/pkg/package.json ]]; then export PKG_DIR="$ROOT/www/pkg"; fi
    phase bundler bash tests/bundler/run.sh
fi
