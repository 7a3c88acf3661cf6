"""Read the broker's retained discovery configs and mesh states once, at startup (through the
runtime's `read_retained`, with the bridge's own `ha_bridge/sync/<nonce>` marker)."""

from __future__ import annotations

import uuid

from mesh import Contract, Inbound, Transport, read_retained


async def read_back(
    connection: Transport, contract: Contract, filters: list[str], *, timeout: float = 15.0
) -> list[Inbound]:
    marker = contract.topic("ha_sync", nonce=uuid.uuid4().hex)
    return await read_retained(connection, marker, filters, timeout=timeout)
