"""Read the broker's retained messages once, on a short-lived connection of the bridge's own.

Used at startup (Zigbee2MQTT's pattern): what discovery configs does the broker hold for us, and
what is the mesh's current state? After subscribing, the bridge publishes a marker to itself;
the broker delivers in order, so when the marker comes back every retained message has arrived.
"""

from __future__ import annotations

import asyncio
import uuid

from mesh import codec
from mesh.contract import Contract
from mesh.schemas import SyncMarker
from mesh.settings import Settings
from mesh.transport import Inbound, Transport


async def read_retained(
    settings: Settings, contract: Contract, filters: list[str], *, timeout: float = 15.0
) -> list[Inbound]:
    """Every retained message under `filters` (empty payloads are left out)."""
    transport = Transport(
        client_id=f"{settings.client_id}-readback",
        host=settings.broker.host,
        port=settings.broker.port,
        username=settings.broker.username,
        password=settings.broker.password,
        clean_start=True,
        session_expiry_s=0,
    )
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

    transport.on_message = on_message
    await transport.subscribe([*filters, marker])
    try:
        async with asyncio.timeout(timeout):
            await transport.connect(timeout=timeout)
            await transport.publish(
                marker, codec.encode(SyncMarker(nonce=nonce)), qos=1, timeout=timeout
            )
            await done.wait()
    finally:
        await transport.disconnect()
    return found
