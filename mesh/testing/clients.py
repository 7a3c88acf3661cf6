"""Plain MQTT connections for tests and tools: one account, a clean session, nothing durable."""

from __future__ import annotations

import uuid

from mesh.broker.process import MosquittoProcess
from mesh.settings import parse_broker_url
from mesh.transport import Transport


def transport_for(
    broker: MosquittoProcess | str,
    principal: str = "tester",
    *,
    prefix: str = "t",
    max_inflight: int = 1000,
) -> Transport:
    """A Transport for `principal` on `broker` (a MosquittoProcess or a broker URL); not yet
    connected, so handlers and subscriptions can be set first."""
    url = broker if isinstance(broker, str) else broker.url(principal)
    u = parse_broker_url(url)
    return Transport(
        client_id=f"{prefix}-{principal}-{uuid.uuid4().hex[:6]}",
        host=u.host,
        port=u.port,
        username=u.username,
        password=u.password,
        clean_start=True,
        session_expiry_s=0,
        max_inflight=max_inflight,
    )


async def connect_as(
    broker: MosquittoProcess | str, principal: str = "tester", *, prefix: str = "t"
) -> Transport:
    t = transport_for(broker, principal, prefix=prefix)
    await t.connect()
    return t
