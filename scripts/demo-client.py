"""The natsguard demo, seen from NATS clients (run while `make run` is up).

An allowed publish, a denied publish with the -ERR nats-server would send, a refused identity,
and natsguard's stats from Envoy's admin endpoint. With nats-py (the default) also a policy change
that reaches the connections already open, and is changed back. With `--nats-cli PATH` the first
steps are commands of the nats CLI (`make tools` installs it as .tools/bin/nats), each printed
before its output. The defaults are the ports and files of `make run`; the tests pass their own.
"""
import argparse
import asyncio
import pathlib
import shlex
import subprocess
import time
import urllib.request

import nats


def arguments():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--publisher", default="nats://127.0.0.1:14001", help="billing/publisher's port")
    parser.add_argument("--subscriber", default="nats://127.0.0.1:14002", help="billing/subscriber's port")
    parser.add_argument("--visitor", default="nats://127.0.0.1:14003", help="guest/visitor's port")
    parser.add_argument("--admin", default="http://127.0.0.1:19901", help="Envoy's admin endpoint")
    parser.add_argument("--nats-cli", metavar="PATH", help="run the demo with this nats CLI instead of nats-py")
    parser.add_argument("--ecds", default=".run/natsguard-ecds.json", help="the ECDS file Envoy watches")
    parser.add_argument(
        "--wasm", default="target/wasm32-wasip1/release/natsguard.wasm", help="the module, as Envoy resolves the path"
    )
    return parser.parse_args()


ROOT = pathlib.Path(__file__).resolve().parent.parent


def natsguard_stat(args, name):
    stats = urllib.request.urlopen(f"{args.admin}/stats", timeout=5).read().decode()
    for line in stats.splitlines():
        if line.startswith(f"wasmcustom.natsguard.{name}: "):
            return int(line.split(": ")[1])
    return 0


async def set_policy(args, policy):
    """scripts/set-policy.sh (the policy checked, then renamed over the ECDS file), then a wait
    until Envoy applied it."""
    before = natsguard_stat(args, "policy_updates")
    command = [ROOT / "scripts/set-policy.sh", ROOT / policy, "--out", args.ecds, "--wasm", args.wasm]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    for _ in range(100):
        if natsguard_stat(args, "policy_updates") > before:
            # Every worker VM takes it from the recorded configuration within a tick.
            await asyncio.sleep(0.2)
            return
        await asyncio.sleep(0.05)
    raise SystemExit(f"Envoy did not apply {policy}; see its log")


# The demo's steps, the same with both clients.
ALLOWED = "publisher (billing/publisher) publishes billing.invoice — allowed:"
DENIED = "publisher publishes billing.admin.reset — denied by 'billing.admin.>':"
REFUSED = "visitor (guest/visitor) connects — no rule matches its identity:"


async def with_nats_py(args):
    async def show_error(error):
        print(f"  publisher's error callback: {error}")

    async def show_subscriber_error(error):
        print(f"  subscriber's error callback: {error}")

    subscriber = await nats.connect(args.subscriber, error_cb=show_subscriber_error)

    async def delivered(msg):
        print(f"  subscriber received {msg.subject}: {msg.data.decode()}")

    await subscriber.subscribe("billing.>", cb=delivered)
    await subscriber.flush()
    publisher = await nats.connect(args.publisher, error_cb=show_error)

    print(ALLOWED)
    await publisher.publish("billing.invoice", b"invoice #42")
    await publisher.flush()
    await asyncio.sleep(0.3)

    print(DENIED)
    await publisher.publish("billing.admin.reset", b"reset everything")
    await publisher.flush()
    await asyncio.sleep(0.3)
    print(f"  publisher still connected: {publisher.is_connected}")

    print(REFUSED)

    async def quiet(_error):
        pass

    try:
        await nats.connect(args.visitor, error_cb=quiet, allow_reconnect=False, connect_timeout=3)
    except Exception as error:  # nats-py raises the server's -ERR text
        print(f"  refused: {error}")

    print("the policy changes under both open connections (scripts/set-policy.sh envoy/demo-policy-live.json):")
    await set_policy(args, "envoy/demo-policy-live.json")
    print("publisher publishes billing.refund — no longer allowed:")
    await publisher.publish("billing.refund", b"refund #7")
    await publisher.flush()
    await asyncio.sleep(0.3)
    print("subscriber subscribes billing.invoice.> instead; publisher publishes billing.invoice.43:")
    await subscriber.subscribe("billing.invoice.>", cb=delivered)
    await subscriber.flush()
    await asyncio.sleep(0.3)
    await publisher.publish("billing.invoice.43", b"invoice #43")
    await publisher.flush()
    await asyncio.sleep(0.3)
    print(f"  both still connected: {publisher.is_connected and subscriber.is_connected}")
    await set_policy(args, "envoy/demo-policy.json")
    print("  (demo policy restored: scripts/set-policy.sh envoy/demo-policy.json)")

    await publisher.close()
    await subscriber.close()


def with_nats_cli(args):
    def command(server, *rest):
        # --no-context: the user's saved nats contexts (credentials, TLS) do not apply to the demo.
        return [args.nats_cli, "--no-context", "--server", server, *rest]

    def show(argv):
        print(f"  $ {shlex.join(argv)}")

    def run(argv):
        show(argv)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
        for line in (done.stdout + done.stderr).splitlines():
            print(f"    {line}")
        print(f"    (exit status {done.returncode})")

    subscribe = command(args.subscriber, "sub", "billing.>", "--count", "1")
    show(subscribe)
    subscriber = subprocess.Popen(subscribe, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = subscriber.stdout.readline()
        print(f"    {first.rstrip()}")
        # `nats sub` says "Subscribing on" before its SUB has reached the server, and gives no
        # other ready signal: leave the SUB time to cross the mesh.
        time.sleep(1)
        print(ALLOWED)
        run(command(args.publisher, "pub", "billing.invoice", "invoice #42"))
        rest, _ = subscriber.communicate(timeout=10)
        for line in filter(None, rest.splitlines()):
            print(f"    {line}")
    finally:
        subscriber.kill()
    print(DENIED)
    run(command(args.publisher, "pub", "billing.admin.reset", "reset everything"))
    print(REFUSED)
    run(command(args.visitor, "pub", "billing.invoice", "hello"))


def main():
    args = arguments()
    if args.nats_cli:
        with_nats_cli(args)
    else:
        asyncio.run(with_nats_py(args))
    print(f"natsguard stats (curl -s {args.admin}/stats | grep natsguard):")
    stats = urllib.request.urlopen(f"{args.admin}/stats", timeout=5).read().decode()
    for line in stats.splitlines():
        if "natsguard" in line:
            print(f"  {line}")


main()
