#!/usr/bin/env bash
# `make bench`: builds the module and the load generator, then runs examples/loadgen.rs, which
# starts nats-server and the Envoy mesh harness on free loopback ports (one setup at a time,
# stopped when measured, also on failure) and writes BENCHMARKS.md. Extra arguments go to the
# load generator (e.g. `scripts/bench.sh --seconds 1 --out /tmp/bench.md`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build-wasm.sh
scripts/ensure-runtime.sh
envoy/gen-certs.sh >/dev/null
cargo build --locked --release --example loadgen
# Every run is bounded: a hung setup cannot keep the benchmark going forever.
exec timeout --kill-after=10 600 target/release/examples/loadgen --out BENCHMARKS.md "$@"
