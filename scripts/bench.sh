#!/usr/bin/env bash
# `make bench`: builds the module and the load generator (benches/loadgen, a package of its own
# built with the `loadgen` profile: no LTO, so a cold build takes about two minutes rather than
# compiling natsguard's dev-dependencies with fat LTO), then runs it: it starts nats-server and
# the Envoy mesh harness on free loopback ports (one setup at a time, stopped when measured, also
# on failure), runs the load generator's measurements and `nats bench` (the nats CLI of
# scripts/ensure-tools.sh) on each, and writes BENCHMARKS.md. Extra arguments go to the load
# generator, e.g. a quick subset while optimising, written to target/bench-partial.md unless --out
# says otherwise:
#   scripts/bench.sh --payloads 128 --setups 2,3 --only throughput --seconds 1
# (`scripts/bench.sh --help` lists the options).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build-wasm.sh natsguard-passthrough
scripts/ensure-runtime.sh
scripts/ensure-tools.sh
envoy/gen-certs.sh >/dev/null
cargo build --locked -p natsguard-loadgen --profile loadgen
# Every run is bounded: a hung setup cannot keep the benchmark going forever.
exec timeout --kill-after=10 1200 target/loadgen/loadgen "$@"
