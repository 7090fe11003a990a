#!/usr/bin/env bash
# Builds the browser app: crates/idefics2-app for wasm32-unknown-unknown with Debian's rustc-web
# (rustup has no wasm target here; build-std, wasm-ld-19), then wasm-bindgen into web/pkg/.
# Installs its Debian packages and wasm-bindgen-cli (the version in Cargo.lock) when missing.
# Usage: web/build.sh [--debug | --profile NAME] [--serve [PORT]]
#   --serve: then serve the repository root on 127.0.0.1 (default port 8080) and print the page's
#   URL (the page loads the demo model from assets/ next to it).
set -euo pipefail
cd "$(dirname "$0")/.."
profile=release
serve=""
while (( $# )); do
  case "$1" in
    --debug) profile=dev ;;
    --profile) profile=$2; shift ;;
    --serve) serve=8080; [[ "${2:-}" =~ ^[0-9]+$ ]] && { serve=$2; shift; } ;;
    *) echo "usage: web/build.sh [--debug | --profile NAME] [--serve [PORT]]" >&2; exit 2 ;;
  esac
  shift
done
out_profile=$([[ $profile == dev ]] && echo debug || echo "$profile")
wasm_target=${IDEFICS2_WASM_TARGET_DIR:-target/wasm}

if [[ ! -x /usr/bin/rustc || ! -x /usr/bin/wasm-ld-19 || ! -d /usr/lib/rustlib/src ]]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq rustc-web cargo-web rust-web-src lld-19 >/dev/null
fi
bindgen_version=$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/^version = "\(.*\)"/\1/p')
if [[ "$(wasm-bindgen --version 2>/dev/null)" != "wasm-bindgen $bindgen_version" ]]; then
  # The native (rustup) toolchain builds the CLI; it must match the crate's version exactly.
  cargo install wasm-bindgen-cli --version "$bindgen_version"
fi

(
  export PATH=/usr/bin:$PATH RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1
  export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER=wasm-ld-19
  # getrandom 0.3/0.4 (through burn) must be told to use the browser's crypto.getRandomValues.
  export RUSTFLAGS="${RUSTFLAGS:-} --cfg getrandom_backend=\"wasm_js\""
  # A target dir of its own: Debian's compiler would otherwise invalidate the native build.
  # .ci/run points it at a cache outside the clone (IDEFICS2_WASM_TARGET_DIR).
  export CARGO_TARGET_DIR=$wasm_target
  /usr/bin/cargo build --profile "$profile" --target wasm32-unknown-unknown \
    -Zbuild-std=std,panic_abort -p idefics2-app --lib
)
wasm-bindgen --target web --no-typescript --out-dir web/pkg \
  "$wasm_target/wasm32-unknown-unknown/$out_profile/idefics2_app.wasm"
ls -l web/pkg/idefics2_app_bg.wasm
if [[ -n "$serve" ]]; then
  echo "open http://127.0.0.1:$serve/web/index.html  (Ctrl-C stops the server)"
  exec python3 -m http.server --bind 127.0.0.1 "$serve"
fi
