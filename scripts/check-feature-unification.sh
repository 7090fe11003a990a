#!/usr/bin/env bash
# The README's first command (`cargo run --release -p idefics2-cli`) and its test command
# (`cargo test --release --workspace`) must build the same units, so that the second compiles no
# wgpu, cubecl or burn crate again. Compares cargo's unit graphs of the two (nothing is built):
# every unit of the first must be one of the second (same package, target, features and profile).
# The feature pins that make it so are in crates/idefics2-kernels/Cargo.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
units() {
  RUSTC_BOOTSTRAP=1 cargo "$@" --unit-graph -Z unstable-options | python3 -c '
import json, sys
for u in json.load(sys.stdin)["units"]:
    p = u["profile"]
    print(u["pkg_id"], u["target"]["name"], u["mode"], ",".join(u["features"]),
          p["opt_level"], p["debug_assertions"], p["overflow_checks"], u.get("platform"))
' | sort -u
}
# (`cargo run` builds what `cargo build --bin idefics2` does; its --unit-graph is not supported.)
first=$(units build --release -p idefics2-cli --bin idefics2)
tests=$(units test --release --workspace --no-run)
extra=$(comm -23 <(echo "$first") <(echo "$tests"))
if [[ -n "$extra" ]]; then
  echo "FAIL: these units of 'cargo run -p idefics2-cli' differ from 'cargo test --workspace':"
  echo "$extra"
  exit 1
fi
echo "feature unification: all $(echo "$first" | wc -l) units of the first command are among the $(echo "$tests" | wc -l) of the tests"
