"""The natsguard demo, seen from NATS clients (run while `make run` is up).

An allowed publish, a denied publish with the -ERR nats-server would send, a refused identity,
and natsguard's stats from Envoy's admin endpoint.
"""
import asyncio
import urllib.request

import nats

PUBLISHER, SUBSCRIBER, VISITOR = "nats://127.0.0.1:14001", "nats://127.0.0.1:14002", "nats://127.0.0.1:14003"


async def main():
    async def show_error(error):
        print(f"  publisher's error callback: {error}")

    subscriber = await nats.connect(SUBSCRIBER)

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

    await publisher.close()
    await subscriber.close()

    print("natsguard stats (curl -s 127.0.0.1:19901/stats | grep natsguard):")
    stats = urllib.request.urlopen("http://127.0.0.1:19901/stats", timeout=5).read().decode()
    for line in stats.splitlines():
        if "natsguard" in line:
            print(f"  {line}")


asyncio.run(main())
