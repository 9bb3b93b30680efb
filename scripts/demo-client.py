"""The natsguard demo, seen from NATS clients (run while `make run` is up).

An allowed publish, a denied publish with the -ERR nats-server would send, a refused identity,
a policy change that reaches the connections already open (and is changed back), and
natsguard's stats from Envoy's admin endpoint.
"""
import asyncio
import pathlib
import subprocess
import urllib.request

import nats

PUBLISHER, SUBSCRIBER, VISITOR = "nats://127.0.0.1:14001", "nats://127.0.0.1:14002", "nats://127.0.0.1:14003"
ROOT = pathlib.Path(__file__).resolve().parent.parent


def natsguard_stat(name):
    stats = urllib.request.urlopen("http://127.0.0.1:19901/stats", timeout=5).read().decode()
    for line in stats.splitlines():
        if line.startswith(f"wasmcustom.natsguard.{name}: "):
            return int(line.split(": ")[1])
    return 0


async def set_policy(policy):
    """scripts/set-policy.sh, then wait until Envoy applied it."""
    before = natsguard_stat("policy_updates")
    subprocess.run([ROOT / "scripts/set-policy.sh", ROOT / policy], check=True, stdout=subprocess.DEVNULL)
    for _ in range(100):
        if natsguard_stat("policy_updates") > before:
            return
        await asyncio.sleep(0.05)
    raise SystemExit(f"Envoy did not apply {policy}; see .run/envoy.log")


async def main():
    async def show_error(error):
        print(f"  publisher's error callback: {error}")

    async def show_subscriber_error(error):
        print(f"  subscriber's error callback: {error}")

    subscriber = await nats.connect(SUBSCRIBER, error_cb=show_subscriber_error)

    async def delivered(msg):
        print(f"  subscriber received {msg.subject}: {msg.data.decode()}")

    await subscriber.subscribe("billing.>", cb=delivered)
    await subscriber.flush()
    publisher = await nats.connect(PUBLISHER, error_cb=show_error)

    print("publisher (billing/publisher) publishes billing.invoice — allowed:")
    await publisher.publish("billing.invoice", b"invoice #42")
    await publisher.flush()
    await asyncio.sleep(0.3)

    print("publisher publishes billing.admin.reset — denied by 'billing.admin.>':")
    await publisher.publish("billing.admin.reset", b"reset everything")
    await publisher.flush()
    await asyncio.sleep(0.3)
    print(f"  publisher still connected: {publisher.is_connected}")

    print("visitor (guest/visitor) connects — no rule matches its identity:")
    async def quiet(_error):
        pass

    try:
        await nats.connect(VISITOR, error_cb=quiet, allow_reconnect=False, connect_timeout=3)
    except Exception as error:  # nats-py raises the server's -ERR text
        print(f"  refused: {error}")

    print("the policy changes under both open connections (scripts/set-policy.sh envoy/demo-policy-live.json):")
    await set_policy("envoy/demo-policy-live.json")
    await asyncio.sleep(0.3)
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
    await set_policy("envoy/demo-policy.json")
    print("  (demo policy restored: scripts/set-policy.sh envoy/demo-policy.json)")

    await publisher.close()
    await subscriber.close()

    print("natsguard stats (curl -s 127.0.0.1:19901/stats | grep natsguard):")
    stats = urllib.request.urlopen("http://127.0.0.1:19901/stats", timeout=5).read().decode()
    for line in stats.splitlines():
        if "natsguard" in line:
            print(f"  {line}")


asyncio.run(main())
