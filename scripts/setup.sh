#!/usr/bin/env bash
# Installs everything the tests need, idempotently (each step is skipped when already done):
#   Debian packages: chromium, chromium-driver, firefox-esr, mesa-vulkan-drivers (lavapipe), vulkan-tools
#   rustup: target wasm32-unknown-unknown, components clippy + rustfmt
#   cargo install --locked: wasm-bindgen-cli (the exact version of the wasm-bindgen crate in
#   Cargo.lock), wasm-pack, geckodriver
# Usage: bash scripts/setup.sh
set -euo pipefail

WASM_PACK_VERSION="0.15.1"
GECKODRIVER_VERSION="0.37.1"
APT_PACKAGES=(chromium chromium-driver firefox-esr mesa-vulkan-drivers vulkan-tools)

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}"
export PATH="$CARGO_HOME/bin:$PATH"

say() { echo "setup: $*"; }
die() { echo "setup: error: $*" >&2; exit 1; }
now() { date +%s; }

# The wasm-bindgen CLI must match the wasm-bindgen crate exactly: read it from Cargo.lock.
wasm_bindgen_lock_version() {
    awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' \
        "$ROOT/Cargo.lock"
}

apt_packages() {
    local missing=() pkg
    for pkg in "${APT_PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
            missing+=("$pkg")
        fi
    done
    if ((${#missing[@]} == 0)); then
        say "apt: ${APT_PACKAGES[*]} already installed"
        return
    fi
    command -v apt-get >/dev/null || die "apt-get not found; install ${missing[*]} by hand"
    local sudo=()
    if [[ $(id -u) -ne 0 ]]; then sudo=(sudo); fi
    say "apt: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq "${missing[@]}"
}

rust_parts() {
    command -v rustup >/dev/null || die "rustup not found"
    if rustup target list --installed | grep -qx wasm32-unknown-unknown; then
        say "rustup: target wasm32-unknown-unknown already installed"
    else
        say "rustup: adding target wasm32-unknown-unknown"
        rustup target add wasm32-unknown-unknown
    fi
    local comp
    for comp in clippy rustfmt; do
        if rustup component list --installed | grep -q "^$comp"; then
            say "rustup: component $comp already installed"
        else
            say "rustup: adding component $comp"
            rustup component add "$comp"
        fi
    done
}

# cargo_tool CRATE VERSION BINARY: install CRATE@VERSION unless BINARY --version reports it.
cargo_tool() {
    local crate=$1 version=$2 bin=$3 have=""
    if command -v "$bin" >/dev/null; then
        have="$("$bin" --version 2>/dev/null | sed -n 1p | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -n1 || true)"
    fi
    if [[ "$have" == "$version" ]]; then
        say "cargo: $crate $version already installed ($(command -v "$bin"))"
        return
    fi
    say "cargo: installing $crate $version${have:+ (found $have)}"
    local start
    start=$(now)
    # Own temporary target dir (not the project's CARGO_TARGET_DIR), so the tool builds stay apart.
    if ! env -u CARGO_TARGET_DIR cargo install --locked --force "$crate" --version "$version"; then
        # A lock file may pin a dependency version the registry does not serve (seen with
        # wasm-bindgen-cli 0.2.130: webpki-roots 1.0.11); resolve afresh in that case.
        say "cargo: --locked install of $crate failed; retrying without --locked"
        env -u CARGO_TARGET_DIR cargo install --force "$crate" --version "$version"
    fi
    say "cargo: $crate $version installed in $(($(now) - start))s"
}

main() {
    local start
    start=$(now)
    apt_packages
    rust_parts
    local wbg
    wbg="$(wasm_bindgen_lock_version)"
    [[ -n "$wbg" ]] || die "wasm-bindgen not found in Cargo.lock"
    cargo_tool wasm-bindgen-cli "$wbg" wasm-bindgen
    cargo_tool wasm-pack "$WASM_PACK_VERSION" wasm-pack
    cargo_tool geckodriver "$GECKODRIVER_VERSION" geckodriver
    command -v chromedriver >/dev/null || die "chromedriver not on PATH after install"
    say "versions: $(wasm-bindgen --version); $(wasm-pack --version); $(geckodriver --version | sed -n 1p);" \
        "$(chromedriver --version | cut -d' ' -f1-2); $(firefox-esr --version 2>/dev/null)"
    say "done in $(($(now) - start))s"
}

main "$@"
