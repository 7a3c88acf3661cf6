"""Read what the broker retains under some filters, once, on a short-lived clean connection.

After subscribing, the reader publishes a marker to itself; the broker delivers in order, so
when the marker comes back every retained message of the new subscriptions has arrived
(Zigbee2MQTT reads its own discovery configs back the same way).
"""

from __future__ import annotations

import asyncio
import uuid

from mesh import codec
from mesh.schemas import SyncMarker
from mesh.transport import Inbound, Transport


async def read_retained(
    connection: Transport, marker_topic: str, filters: list[str], *, timeout: float = 15.0
) -> list[Inbound]:
    """Every retained message under `filters` (empty payloads left out), read on `connection`
    (a new, clean one: retained messages come with new subscriptions; it is disconnected
    after). `marker_topic` must be one the account may publish and read."""
    nonce = uuid.uuid4().hex
    marker = codec.encode(SyncMarker(nonce=nonce))
    found: list[Inbound] = []
    done = asyncio.Event()

    async def on_message(msg: Inbound) -> int:
        if msg.topic == marker_topic and msg.payload == marker:
            done.set()
        elif msg.retain and msg.payload:
            found.append(msg)
        return 0

    connection.on_message = on_message
    await connection.subscribe([*filters, marker_topic])
    try:
        async with asyncio.timeout(timeout):
            await connection.connect(timeout=timeout)
            await connection.publish(marker_topic, marker, qos=1, timeout=timeout)
            await done.wait()
    finally:
        await connection.disconnect()
    return found
