#!/usr/bin/env bash
# Builds target/wasm32-wasip1/release/natsguard.wasm and checks its imports; packages named as
# arguments are built beside it (`scripts/build-wasm.sh natsguard-passthrough`: make bench's floor,
# target/wasm32-wasip1/release/natsguard_passthrough.wasm).
#
# Toolchain detection: with rustup, the wasm32-wasip1 target is added if missing and the plain
# `cargo build --target wasm32-wasip1` runs. Without rustup, or if the target cannot be added,
# Debian's rustc-web route is used: rustc 1.96 with the std sources (-Zbuild-std) linked against
# Debian's wasi-libc by lld; its packages are installed when missing (needs root). NATSGUARD_WASM_TOOLCHAIN=debian forces the second route.
set -euo pipefail
cd "$(dirname "$0")/.."
target=wasm32-wasip1
out=target/$target/release/natsguard.wasm
debian_packages=(rustc-web cargo-web rust-web-src rust-web-llvm lld-22 wasi-libc)
packages=(-p natsguard)
for package in "$@"; do packages+=(-p "$package"); done

has_rustup_target() {
    command -v rustup >/dev/null 2>&1 && rustup target list --installed 2>/dev/null | grep -qx "$target"
}
if [[ ${NATSGUARD_WASM_TOOLCHAIN:-} != debian ]] && command -v rustup >/dev/null 2>&1 &&
    ! has_rustup_target; then
    # A normal rustup gets the plain build: try to add the target (it needs the network once).
    echo "build-wasm: rustup add target $target"
    rustup target add "$target" >/dev/null 2>&1 ||
        echo "build-wasm: rustup could not add $target; using Debian's rustc-web route" >&2
fi
if [[ ${NATSGUARD_WASM_TOOLCHAIN:-} != debian ]] && has_rustup_target; then
    echo "build-wasm: rustup toolchain with $target"
    cargo build --release --target "$target" --lib "${packages[@]}"
else
    missing=()
    for package in "${debian_packages[@]}"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
    done
    if ((${#missing[@]})); then
        if [[ $(id -u) -ne 0 ]]; then
            echo "build-wasm: no rustup toolchain with the $target target, and Debian packages missing: ${missing[*]}" >&2
            echo "build-wasm: either 'rustup target add $target', or as root: apt-get install ${missing[*]}" >&2
            exit 1
        fi
        echo "build-wasm: installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    echo "build-wasm: Debian rustc-web ($(/usr/bin/rustc --version)) with -Zbuild-std"
    # RUSTFLAGS replaces .cargo/config.toml's target flags: it repeats their 32-bit limbs.
    RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 \
        RUSTFLAGS="-C link-self-contained=no -L /usr/lib/wasm32-wasi --cfg cpubits=\"32\"" \
        /usr/bin/cargo build --release --target "$target" --lib "${packages[@]}" -Zbuild-std=std,panic_abort
fi

python3 scripts/check-wasm-imports.py "$out"
echo "build-wasm: $out ($(stat -c %s "$out") bytes)"
