# Sourced by .ci/run and web/build.sh: build caches outside the clone, so that every CI run (a
# fresh clone) and a developer's own runs on the same machine reuse one cargo target.
#   idefics2_cache_target KIND RUSTC  prints the target directory for KIND (native, wasm) built
#   by the compiler RUSTC, and deletes that KIND's directories for other compilers.
# The key is the compiler's `-vV`: a new toolchain gets a fresh directory. A lockfile change needs
# no key of its own: cargo's fingerprint of every unit holds each dependency's exact version,
# source and features, so a changed Cargo.lock rebuilds what changed and reuses the rest.
# Override the location with IDEFICS2_CACHE.
idefics2_cache_root=${IDEFICS2_CACHE:-/var/cache/idefics2}
idefics2_cache_target() {
  local kind=$1 rustc=$2 key dir old
  key=$("$rustc" -vV | sha256sum | cut -c1-16)
  dir="$idefics2_cache_root/$kind-$key"
  mkdir -p "$dir"
  for old in "$idefics2_cache_root/$kind"-*/; do
    [[ -d "$old" && "${old%/}" != "$dir" ]] && rm -rf "$old"
  done
  echo "$dir"
}
