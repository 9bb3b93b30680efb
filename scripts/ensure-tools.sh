#!/usr/bin/env bash
# Installs the Go tools around the harness into ./.tools/bin, pinned: func-e (runs envoy/mesh.yaml
# as its users do; the venv's Envoy is placed for it by scripts/ensure-runtime.sh) and the nats CLI
# (`nats pub`/`sub` for the demo, `nats bench` for `make bench`); with arguments, the tools named,
# e.g. `scripts/ensure-tools.sh istioctl` for scripts/istio-analyze.sh. Built by `go install` from
# the Go module proxy; idempotent: a tool whose binary already records the pinned module version
# (its build information, `go version -m`) is not rebuilt.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$PWD/.tools/bin
# name, main package, module, version (istio.io/istio has no semver tags: a pseudo-version of its
# main branch, 2026-08-27)
tools=(
    "func-e github.com/tetratelabs/func-e/cmd/func-e github.com/tetratelabs/func-e v1.6.0"
    "nats github.com/nats-io/natscli/nats github.com/nats-io/natscli v0.5.0"
    "istioctl istio.io/istio/istioctl/cmd/istioctl istio.io/istio v0.0.0-20260827124520-eed52ebb66ad"
)
if [[ $# -gt 0 ]]; then wanted=("$@"); else wanted=(func-e nats); fi

command -v go >/dev/null || { echo "ensure-tools: go not found; the tools are built with Go 1.26 or newer" >&2; exit 1; }
for name in "${wanted[@]}"; do
    printf '%s\n' "${tools[@]}" | grep -q "^$name " || { echo "ensure-tools: no tool '$name' (known: func-e, nats, istioctl)" >&2; exit 2; }
done
for tool in "${tools[@]}"; do
    read -r name package module version <<< "$tool"
    [[ " ${wanted[*]} " == *" $name "* ]] || continue
    if [[ -x $bin/$name ]] && go version -m "$bin/$name" | grep -qE "^[[:space:]]+mod[[:space:]]+$module[[:space:]]+$version[[:space:]]"; then
        continue
    fi
    echo "ensure-tools: go install $package@$version into .tools/bin"
    GOBIN=$bin go install "$package@$version"
done
