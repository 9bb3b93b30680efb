#!/usr/bin/env bash
# Installs the Go tools around the harness into ./.tools/bin, pinned: func-e (runs envoy/mesh.yaml
# as its users do; the venv's Envoy is placed for it by scripts/ensure-runtime.sh) and the nats CLI
# (`nats pub`/`sub` for the demo, `nats bench` for `make bench`). Built by `go install` from the Go
# module proxy; idempotent: a tool whose binary already records the pinned module version (its
# build information, `go version -m`) is not rebuilt.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$PWD/.tools/bin
# name, main package, module, version
tools=(
    "func-e github.com/tetratelabs/func-e/cmd/func-e github.com/tetratelabs/func-e v1.6.0"
    "nats github.com/nats-io/natscli/nats github.com/nats-io/natscli v0.5.0"
)

command -v go >/dev/null || { echo "ensure-tools: go not found; func-e and the nats CLI are built with Go 1.26 or newer" >&2; exit 1; }
for tool in "${tools[@]}"; do
    read -r name package module version <<< "$tool"
    if [[ -x $bin/$name ]] && go version -m "$bin/$name" | grep -qE "^[[:space:]]+mod[[:space:]]+$module[[:space:]]+$version[[:space:]]"; then
        continue
    fi
    echo "ensure-tools: go install $package@$version into .tools/bin"
    GOBIN=$bin go install "$package@$version"
done
