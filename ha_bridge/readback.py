"""Read the broker's retained messages once, on a short-lived connection of the bridge's own.

Used at startup (Zigbee2MQTT's pattern): what discovery configs does the broker hold for us, and
what is the mesh's current state? After subscribing, the bridge publishes a marker to itself;
the broker delivers in order, so when the marker comes back every retained message has arrived.
"""

from __future__ import annotations

import asyncio
import uuid

from lifeops_contract.schemas import SyncMarker
from mesh import Contract, Inbound, Transport, codec


async def read_retained(
    connection: Transport, contract: Contract, filters: list[str], *, timeout: float = 15.0
) -> list[Inbound]:
    """Every retained message under `filters` (empty payloads are left out), read on
    `connection` (a new, clean one: retained messages come with new subscriptions)."""
    nonce = uuid.uuid4().hex
    marker = contract.topic("ha_sync", nonce=nonce)
    found: list[Inbound] = []
    done = asyncio.Event()

    async def on_message(msg: Inbound) -> int:
        if msg.topic == marker:
            done.set()
        elif msg.retain and msg.payload:
            found.append(msg)
        return 0

    connection.on_message = on_message
    await connection.subscribe([*filters, marker])
    try:
        async with asyncio.timeout(timeout):
            await connection.connect(timeout=timeout)
            await connection.publish(
                marker, codec.encode(SyncMarker(nonce=nonce)), qos=1, timeout=timeout
            )
            await done.wait()
    finally:
        await connection.disconnect()
    return found
