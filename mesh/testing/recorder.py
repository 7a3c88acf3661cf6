"""A subscriber that keeps every message it sees."""

from __future__ import annotations

import asyncio

from mesh.broker.process import MosquittoProcess
from mesh.testing.brokers import InMemoryBroker, MosquittoBroker, transport_for
from mesh.transport import Inbound, Transport


class Recorder:
    """`async with Recorder(broker, filters) as rec:` ... `rec.on(topic)`: a clean connection
    of `principal` (default tester) on `broker`, or the connection given."""

    def __init__(
        self,
        source: Transport | MosquittoProcess | MosquittoBroker | InMemoryBroker,
        filters: list[str],
        principal: str = "tester",
    ) -> None:
        if isinstance(source, MosquittoProcess | MosquittoBroker | InMemoryBroker):
            source = transport_for(source, principal, prefix="rec")
        self.transport: Transport = source
        self.filters = filters
        self.messages: list[Inbound] = []
        self.transport.on_message = self._on

    async def _on(self, msg: Inbound) -> int:
        self.messages.append(msg)
        return 0

    def on(self, topic: str) -> list[Inbound]:
        return [m for m in self.messages if m.topic == topic]

    async def __aenter__(self) -> Recorder:
        await self.transport.subscribe(self.filters)
        await self.transport.connect()
        await asyncio.sleep(0.05)  # retained messages of the new subscriptions
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.transport.disconnect()
