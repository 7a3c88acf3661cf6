"""One interface over the brokers a test can run on: a real Mosquitto, or the in-memory twin.

Behaviour suites take a `BrokerUnderTest` and ask it for connections; they run unchanged on both
(the Mosquitto run is the one that counts; the twin is for speed and focus).
"""

from __future__ import annotations

import uuid
from typing import Protocol

from mesh.broker.process import MosquittoProcess
from mesh.client import MeshClient, broker_transport, plain_transport
from mesh.contract import Contract
from mesh.settings import Settings, parse_broker_url
from mesh.transport import MemoryBroker, Transport, Will


class BrokerUnderTest(Protocol):
    """A broker a test talks to through `Transport`s."""

    kind: str

    def connect_as(self, principal: str, *, prefix: str = "t") -> Transport:
        """A clean, non-durable connection for `principal` (not yet connected)."""
        ...

    def connection(
        self,
        principal: str,
        client_id: str,
        *,
        session_expiry_s: int = 0,
        will: Will | None = None,
    ) -> Transport:
        """A connection with a fixed client id: durable when `session_expiry_s` > 0."""
        ...

    def agent_transport(self, settings: Settings, principal: str, will: Will) -> Transport:
        """The durable session of an agent (client id from `settings`)."""
        ...


class MosquittoBroker:
    """A real Mosquitto (`MosquittoProcess`) behind the `BrokerUnderTest` interface."""

    kind = "mosquitto"

    def __init__(self, proc: MosquittoProcess) -> None:
        self.proc = proc

    def url(self, principal: str) -> str:
        return self.proc.url(principal)

    def connect_as(self, principal: str, *, prefix: str = "t") -> Transport:
        return plain_transport(self.proc.url(principal), prefix=f"{prefix}-{principal}")

    def connection(
        self,
        principal: str,
        client_id: str,
        *,
        session_expiry_s: int = 0,
        will: Will | None = None,
    ) -> Transport:
        url = parse_broker_url(self.proc.url(principal))
        return broker_transport(
            url, client_id=client_id, session_expiry_s=session_expiry_s, will=will
        )

    def agent_transport(self, settings: Settings, principal: str, will: Will) -> Transport:
        return self.connection(
            principal, settings.client_id, session_expiry_s=settings.session_expiry_s, will=will
        )


class InMemoryBroker:
    """The in-memory twin (`MemoryBroker`) behind the `BrokerUnderTest` interface."""

    kind = "memory"

    def __init__(self, broker: MemoryBroker | None = None) -> None:
        self.broker = broker or MemoryBroker()

    def connect_as(self, principal: str, *, prefix: str = "t") -> Transport:
        return self.broker.transport(
            f"{prefix}-{principal}-{uuid.uuid4().hex[:8]}", username=principal
        )

    def connection(
        self,
        principal: str,
        client_id: str,
        *,
        session_expiry_s: int = 0,
        will: Will | None = None,
    ) -> Transport:
        return self.broker.transport(
            client_id,
            username=principal,
            clean_start=session_expiry_s == 0,
            session_expiry_s=session_expiry_s,
            will=will,
        )

    def agent_transport(self, settings: Settings, principal: str, will: Will) -> Transport:
        return self.connection(
            principal, settings.client_id, session_expiry_s=settings.session_expiry_s, will=will
        )


def as_test_broker(broker: BrokerUnderTest | MosquittoProcess) -> BrokerUnderTest:
    if isinstance(broker, MosquittoProcess):
        return MosquittoBroker(broker)
    return broker


def transport_for(
    broker: BrokerUnderTest | MosquittoProcess, principal: str = "tester", *, prefix: str = "t"
) -> Transport:
    """A clean connection for `principal`, not yet connected (set handlers first)."""
    return as_test_broker(broker).connect_as(principal, prefix=prefix)


async def connect_as(
    broker: BrokerUnderTest | MosquittoProcess, principal: str = "tester", *, prefix: str = "t"
) -> Transport:
    """A clean connection for `principal`, connected."""
    t = transport_for(broker, principal, prefix=prefix)
    await t.connect()
    return t


def client_for(
    broker: BrokerUnderTest | MosquittoProcess, contract: Contract, principal: str = "tester"
) -> MeshClient:
    """A mesh client of `principal` on `broker` (use as `async with`)."""
    return MeshClient.over(transport_for(broker, principal, prefix="client"), contract, principal)
