#!/usr/bin/env bash
# Changes the demo's natsguard policy while clients stay connected: checks the policy with the
# filter's own loader (`natsguard ecds` writes nothing if it is invalid), then renames a new
# version of the ECDS file over the one Envoy watches (envoy/mesh.yaml). Envoy applies it to
# new connections, natsguard to the open ones.
#   scripts/set-policy.sh envoy/demo-policy-live.json     # while `make run` is up
#   scripts/set-policy.sh envoy/demo-policy.json          # back to the demo policy
# Further arguments go to `natsguard ecds` (e.g. another --out for a harness of the tests).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $# -ge 1 ]] || { echo "usage: $0 <natsguard policy JSON> [natsguard ecds options]" >&2; exit 2; }
cargo build --quiet --locked --bin natsguard
out=(--out .run/natsguard-ecds.json)
[[ " $* " == *" --out "* ]] && out=()
mkdir -p .run
exec target/debug/natsguard ecds "$@" "${out[@]}"
