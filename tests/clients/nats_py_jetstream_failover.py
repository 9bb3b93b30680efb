"""nats-py publishing to a JetStream stream through the cluster's sidecars while the test fails
the node it is connected to. Every message carries a Nats-Msg-Id and is published again until
acknowledged (the stream drops a duplicate of a message whose ack was lost). Prints one JSON line
per event, flushed at once so the test can act on it: connected (sidecar port), acked (index,
stream sequence, duplicate), error, disconnected, reconnected (sidecar port), done (retries).

Usage: nats_py_jetstream_failover.py <subject prefix> <count> <url>...
"""
import asyncio
import json
import sys

import nats
import nats.errors


def emit(**event):
    print(json.dumps(event), flush=True)


async def main(prefix, count, urls):
    client = None

    async def error(problem):
        emit(error=str(problem))

    async def disconnected():
        emit(disconnected=True)

    async def reconnected():
        emit(reconnected=client.connected_url.port)

    client = await nats.connect(
        servers=urls,
        dont_randomize=True,
        reconnect_time_wait=0.1,
        max_reconnect_attempts=-1,
        error_cb=error,
        disconnected_cb=disconnected,
        reconnected_cb=reconnected,
    )
    emit(connected=client.connected_url.port)
    jetstream = client.jetstream(timeout=2)
    retries = 0
    for index in range(count):
        while True:
            try:
                ack = await jetstream.publish(
                    f"{prefix}.{index}",
                    f"message {index}".encode(),
                    headers={"Nats-Msg-Id": f"{prefix}-{index}"},
                )
                break
            except nats.errors.Error:
                # No responders or a timeout while the stream elects a leader, or the
                # connection lost: the same message again, with the same id.
                retries += 1
                await asyncio.sleep(0.1)
        emit(acked=index, seq=ack.seq, duplicate=ack.duplicate)
        # Paced, so that the fault lands in the middle of the run.
        await asyncio.sleep(0.01)
    emit(done=count, retries=retries)
    await client.close()


asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3:]))
