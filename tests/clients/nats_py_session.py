"""nats-py through natsguard: pub/sub, queue groups, request/reply, headers, and a denied publish
surfacing in error_cb while the connection stays usable. Prints one JSON line of results.

Usage: nats_py_session.py <publisher url> <subscriber url> <denied subject>
"""
import asyncio
import json
import sys

import nats


async def main(publisher_url, subscriber_url, denied_subject):
    errors = []

    async def error_cb(error):
        errors.append(str(error))

    subscriber = await nats.connect(subscriber_url, error_cb=error_cb, max_reconnect_attempts=0)
    publisher = await nats.connect(publisher_url, error_cb=error_cb, max_reconnect_attempts=0)
    received, queued = [], []

    async def on_message(msg):
        received.append([msg.subject, msg.data.decode(), dict(msg.headers or {})])

    async def on_queued(msg):
        queued.append(msg.subject)

    async def on_request(msg):
        await msg.respond(b"pong:" + msg.data)

    await subscriber.subscribe("billing.events.>", cb=on_message)
    await subscriber.subscribe("billing.jobs", queue="workers", cb=on_queued)
    await subscriber.subscribe("billing.rpc", cb=on_request)
    await subscriber.flush()

    await publisher.publish("billing.events.created", b"one")
    await publisher.publish("billing.events.headers", b"two", headers={"X-Trace": "abc"})
    await publisher.publish("billing.jobs", b"job")
    response = await publisher.request("billing.rpc", b"ping", timeout=5)
    await publisher.publish(denied_subject, b"nope")
    await publisher.flush()
    await asyncio.sleep(0.5)
    await publisher.publish("billing.events.after", b"three")
    await publisher.flush()
    await asyncio.sleep(0.3)

    print(json.dumps({
        "received": received,
        "queued": queued,
        "response": response.data.decode(),
        "errors": errors,
        "publisher_connected": publisher.is_connected,
    }))
    await publisher.close()
    await subscriber.close()


asyncio.run(main(*sys.argv[1:4]))
