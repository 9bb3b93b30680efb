#!/usr/bin/env bash
# `make run`: nats-server + Envoy (the mesh harness of envoy/mesh.yaml, with natsguard and its demo
# policy) in the foreground until Ctrl-C; both processes are stopped on exit.
# ENVOY_RUNNER chooses who starts Envoy: `func-e` (`func-e run`, the project's .tools/bin/func-e or
# one on PATH; installed by scripts/ensure-tools.sh when there is none), `envoy` (the venv's binary),
# or empty: func-e when it is installed, else the venv's Envoy.
set -euo pipefail
cd "$(dirname "$0")/.."
run_dir=.run
mkdir -p "$run_dir"

envoy/gen-certs.sh >/dev/null
# natsguard's configuration reaches Envoy by ECDS from .run/natsguard-ecds.json (envoy/mesh.yaml).
scripts/set-policy.sh envoy/demo-policy.json >/dev/null
func_e=
if [[ -x .tools/bin/func-e ]]; then
    func_e=.tools/bin/func-e
elif command -v func-e >/dev/null 2>&1; then
    func_e=func-e
fi
runner=${ENVOY_RUNNER:-}
case $runner in
    "") runner=$([[ -n $func_e ]] && echo func-e || echo envoy) ;;
    func-e) [[ -n $func_e ]] || { scripts/ensure-tools.sh; func_e=.tools/bin/func-e; } ;;
    envoy) ;;
    *) echo "run-demo: ENVOY_RUNNER is func-e or envoy, not '$runner'" >&2; exit 2 ;;
esac
if [[ $runner == func-e ]]; then
    # .envoy-version picks the venv's Envoy, which scripts/ensure-runtime.sh placed in func-e's
    # layout under .tools/func-e: nothing to download. func-e's run directories go under .run/.
    export FUNC_E_DATA_HOME=${FUNC_E_DATA_HOME:-$PWD/.tools/func-e}
    export FUNC_E_STATE_HOME=${FUNC_E_STATE_HOME:-$PWD/$run_dir/func-e}
    envoy_cmd=("$func_e" run)
    started_by="$func_e run (run directories in $FUNC_E_STATE_HOME/envoy-runs)"
else
    envoy_cmd=(.venv/bin/envoy)
    started_by=".venv/bin/envoy"
fi
if [[ -x .tools/bin/nats ]]; then
    nats_cli=.tools/bin/nats
elif command -v nats >/dev/null 2>&1; then
    nats_cli=nats
else
    nats_cli=
fi

pids=()
cleanup() {
    trap - EXIT INT TERM
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    echo "natsguard demo stopped"
}
trap cleanup EXIT INT TERM

.venv/bin/nats-server -a 127.0.0.1 -p 14222 > "$run_dir/nats-server.log" 2>&1 &
pids+=($!)
"${envoy_cmd[@]}" -c envoy/mesh.yaml --disable-hot-restart --log-path "$run_dir/envoy.log" &
pids+=($!)

ready=
for _ in $(seq 100); do
    if .venv/bin/python -c 'import urllib.request as u; u.urlopen("http://127.0.0.1:19901/ready", timeout=1)' 2>/dev/null; then
        ready=1
        break
    fi
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null || { echo "a demo process exited; see $run_dir/*.log" >&2; exit 1; }; done
    sleep 0.1
done
[[ -n $ready ]] || { echo "Envoy did not become ready; see $run_dir/envoy.log" >&2; exit 1; }

cat <<EOT

natsguard demo is up: nats-server on 127.0.0.1:14222 behind Envoy + natsguard (envoy/mesh.yaml).
Connect a NATS client to an identity's port; it reaches nats-server over mTLS with that SPIFFE ID.

  port   identity                                         may (demo policy: envoy/demo-policy.json)
  14001  spiffe://cluster.local/ns/billing/sa/publisher   publish billing.> except billing.admin.>; subscribe _INBOX.>
  14002  spiffe://cluster.local/ns/billing/sa/subscriber  subscribe billing.> except billing.admin.>; publish nothing
  14003  spiffe://cluster.local/ns/guest/sa/visitor       nothing: no rule matches (default_action deny)
  14004  spiffe://other.example/ns/billing/sa/publisher   nothing: trust domain other.example is not trusted
  14005  (certificate without SPIFFE ID)                  nothing: no mesh identity

Envoy: $started_by
Try (nats-py is in .venv):   .venv/bin/python scripts/demo-client.py
  (it also changes the policy under its open connections, and changes it back)
Change the policy live:      scripts/set-policy.sh <policy.json>   (e.g. envoy/demo-policy-live.json;
  it is checked first, then renamed over $run_dir/natsguard-ecds.json: open connections follow it)
Stats:  curl -s 127.0.0.1:19901/stats | grep natsguard        Logs: $run_dir/envoy.log
EOT
if [[ -n $nats_cli ]]; then
    cat <<EOT
With the nats CLI (or: .venv/bin/python scripts/demo-client.py --nats-cli $nats_cli):
  $nats_cli --server nats://127.0.0.1:14002 sub 'billing.>'                    # as billing/subscriber
  $nats_cli --server nats://127.0.0.1:14001 pub billing.invoice hi             # allowed
  $nats_cli --server nats://127.0.0.1:14001 pub billing.admin.reset hi         # denied: Permissions Violation
  $nats_cli --server nats://127.0.0.1:14003 pub billing.invoice hi             # refused: Authorization Violation
EOT
else
    echo "The nats CLI: \`make tools\` installs it (.tools/bin/nats) and \`make run\` then prints commands for it."
fi
echo "Ctrl-C stops everything."
wait -n "${pids[@]}"
