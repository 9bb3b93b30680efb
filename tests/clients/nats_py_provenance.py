"""nats-py subscriber for the provenance test: subscribes, prints "ready" once nats-server has the
subscription, then prints one JSON line with the first <count> messages (subject, payload,
headers as nats-py reads them).

Usage: nats_py_provenance.py <url> <subject> <count>
"""
import asyncio
import json
import sys

import nats


async def main(url, subject, count):
    connection = await nats.connect(url, max_reconnect_attempts=0)
    received = []
    done = asyncio.Event()

    async def on_message(msg):
        received.append([msg.subject, msg.data.decode(), dict(msg.headers or {})])
        if len(received) == count:
            done.set()

    await connection.subscribe(subject, cb=on_message)
    await connection.flush()
    print("ready", flush=True)
    await asyncio.wait_for(done.wait(), timeout=20)
    print(json.dumps(received), flush=True)
    await connection.close()


asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
