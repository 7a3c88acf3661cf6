"""Plain MQTT connections for tests: one account, a clean session, nothing durable."""

from __future__ import annotations

from mesh.broker.process import MosquittoProcess
from mesh.client import plain_transport
from mesh.transport import Transport


def transport_for(
    broker: MosquittoProcess | str, principal: str = "tester", *, prefix: str = "t"
) -> Transport:
    """A Transport for `principal` on `broker` (a MosquittoProcess or a broker URL); not yet
    connected, so handlers and subscriptions can be set first."""
    url = broker if isinstance(broker, str) else broker.url(principal)
    return plain_transport(url, prefix=f"{prefix}-{principal}")


async def connect_as(
    broker: MosquittoProcess | str, principal: str = "tester", *, prefix: str = "t"
) -> Transport:
    t = transport_for(broker, principal, prefix=prefix)
    await t.connect()
    return t
