"""A tester-account subscriber for tools: collect or stream what arrives on some filters."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from mesh import Inbound, plain_transport


class Watch:
    def __init__(self, broker_url: str, filters: list[str]) -> None:
        self.transport = plain_transport(broker_url, prefix="lifeops-mesh-watch")
        self.filters = filters
        self.queue: asyncio.Queue[Inbound] = asyncio.Queue()
        self.transport.on_message = self._on

    async def _on(self, msg: Inbound) -> int:
        self.queue.put_nowait(msg)
        return 0

    async def __aenter__(self) -> Watch:
        await self.transport.subscribe(self.filters)
        await self.transport.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.transport.disconnect()

    async def stream(
        self, *, timeout: float | None = None, count: int | None = None
    ) -> AsyncIterator[Inbound]:
        """Messages as they come; ends after `timeout` seconds or `count` messages."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout if timeout is not None else None
        seen = 0
        while count is None or seen < count:
            wait = None if end is None else end - loop.time()
            if wait is not None and wait <= 0:
                return
            try:
                async with asyncio.timeout(wait):
                    msg = await self.queue.get()
            except TimeoutError:
                return
            seen += 1
            yield msg

    async def settle(self, quiet: float = 0.5, limit: float = 5.0) -> list[Inbound]:
        """Everything that arrives until nothing came for `quiet` seconds (retained states)."""
        out: list[Inbound] = []
        loop = asyncio.get_running_loop()
        end = loop.time() + limit
        while loop.time() < end:
            try:
                async with asyncio.timeout(quiet):
                    out.append(await self.queue.get())
            except TimeoutError:
                break
        return out
