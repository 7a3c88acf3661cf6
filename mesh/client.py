"""A plain mesh client (no agent, no store): requests by contract key, for tools and scripts."""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from typing import Any

from mesh.contract import Contract
from mesh.rpc import Requester
from mesh.settings import parse_broker_url
from mesh.transport import Inbound, MqttTransport, Transport
from mesh.transport.mqtt import tls_context


def plain_transport(
    broker_url: str,
    *,
    client_id: str | None = None,
    prefix: str = "lifeops-mesh-cli",
    ca_file: str | None = None,
) -> MqttTransport:
    """A connection for tools and tests: the URL's account, a clean session, nothing durable.
    For mqtts:// the broker's certificate is checked against `ca_file`, else
    LIFEOPS_BROKER_CA_FILE, else the system's CAs."""
    url = parse_broker_url(broker_url, ca_file=ca_file or os.environ.get("LIFEOPS_BROKER_CA_FILE"))
    return MqttTransport(
        client_id=client_id or f"{prefix}-{uuid.uuid4().hex[:8]}",
        host=url.host,
        port=url.port,
        username=url.username,
        password=url.password,
        tls=tls_context(url.ca_file) if url.tls else None,
        clean_start=True,
        session_expiry_s=0,
    )


class MeshClient:
    """Requests by contract key over a plain connection of the URL's account (or over any
    `Transport`, e.g. one of the in-memory twin, with `MeshClient.over`)."""

    def __init__(
        self,
        broker_url: str,
        contract: Contract,
        *,
        client_id: str | None = None,
        reply_topic: str | None = None,
    ) -> None:
        """`reply_topic`: a fixed one under reply/<account>/ (default: one per connection).
        With it and the same correlation data, a request sent again from a new connection is
        the same request (a keyless one counts once)."""
        url = parse_broker_url(broker_url)
        transport = plain_transport(broker_url, client_id=client_id)
        self._setup(transport, contract, url.username, reply_topic)

    @classmethod
    def over(cls, transport: Transport, contract: Contract, principal: str) -> MeshClient:
        client = cls.__new__(cls)
        client._setup(transport, contract, principal)
        return client

    def _setup(
        self,
        transport: Transport,
        contract: Contract,
        principal: str | None,
        reply_topic: str | None = None,
    ) -> None:
        self.principal = principal or "tester"
        self.contract = contract
        self.transport = transport
        self.requester = Requester(
            principal=self.principal,
            client_id=self.transport.client_id,
            transport=self.transport,
            contract=self.contract,
            reply_topic=reply_topic,
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
        params: Mapping[str, str] | None = None,
        correlation: bytes | None = None,
    ) -> Any:
        return await self.requester.request(
            key, payload, timeout=timeout, trace_id=trace_id, params=params, correlation=correlation
        )

    async def close(self) -> None:
        await self.transport.disconnect()

    async def __aenter__(self) -> MeshClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
