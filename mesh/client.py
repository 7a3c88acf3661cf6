"""A plain mesh client (no agent, no store): requests by contract key, for tools and scripts."""

from __future__ import annotations

import uuid
from typing import Any

from mesh.contract import Contract, default_contract
from mesh.rpc import Requester
from mesh.settings import parse_broker_url
from mesh.transport import Inbound, Transport


def plain_transport(
    broker_url: str, *, client_id: str | None = None, prefix: str = "lifeops-mesh-cli"
) -> Transport:
    """A connection for tools and tests: the URL's account, a clean session, nothing durable."""
    url = parse_broker_url(broker_url)
    return Transport(
        client_id=client_id or f"{prefix}-{uuid.uuid4().hex[:8]}",
        host=url.host,
        port=url.port,
        username=url.username,
        password=url.password,
        clean_start=True,
        session_expiry_s=0,
    )


class MeshClient:
    def __init__(
        self, broker_url: str, *, contract: Contract | None = None, client_id: str | None = None
    ) -> None:
        url = parse_broker_url(broker_url)
        self.principal = url.username or "tester"
        self.contract = contract or default_contract()
        self.transport = plain_transport(broker_url, client_id=client_id)
        self.requester = Requester(
            principal=self.principal,
            client_id=self.transport.client_id,
            transport=self.transport,
            contract=self.contract,
        )
        self.transport.on_message = self._on_message

    async def _on_message(self, msg: Inbound) -> int:
        self.requester.deliver(msg)
        return 0

    async def connect(self, timeout: float = 10.0) -> None:
        await self.transport.subscribe([self.requester.reply_filter])
        await self.transport.connect(timeout=timeout)

    async def request(
        self,
        key: str,
        payload: Any,
        *,
        timeout: float | None = None,
        trace_id: str | None = None,
        **params: str,
    ) -> Any:
        return await self.requester.request(
            key, payload, timeout=timeout, trace_id=trace_id, **params
        )

    async def close(self) -> None:
        await self.transport.disconnect()

    async def __aenter__(self) -> MeshClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
