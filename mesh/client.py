"""A plain mesh client (no agent, no store): requests by contract key, for tools and scripts."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from mesh.contract import Contract
from mesh.rpc import Requester
from mesh.settings import BrokerURL, tool_broker
from mesh.transport import Inbound, MqttTransport, Transport, Will
from mesh.transport.mqtt import tls_context

CLIENT_ID_PREFIX = "lifeops-mesh-cli"


def broker_transport(
    broker: BrokerURL, *, client_id: str, session_expiry_s: int = 0, will: Will | None = None
) -> MqttTransport:
    """The one way to open a connection to a broker URL (agents, tools and tests): the URL's
    account, TLS for mqtts:// (the broker's certificate checked against the URL's CA file, else
    the system's CAs). A session that ends with the connection (`session_expiry_s` 0) starts
    clean; a durable one resumes what the broker kept."""
    return MqttTransport(
        client_id=client_id,
        host=broker.host,
        port=broker.port,
        username=broker.username,
        password=broker.password,
        tls=tls_context(broker.ca_file) if broker.tls else None,
        clean_start=session_expiry_s == 0,
        session_expiry_s=session_expiry_s,
        will=will,
    )


def plain_transport(
    broker_url: str,
    *,
    client_id: str | None = None,
    prefix: str = CLIENT_ID_PREFIX,
    ca_file: str | None = None,
) -> MqttTransport:
    """A connection for tools and tests: the URL's account, a clean session, nothing durable.
    For mqtts:// the broker's certificate is checked against `ca_file`, else
    LIFEOPS_BROKER_CA_FILE, else the system's CAs."""
    url = tool_broker(broker_url, ca_file=ca_file)
    return broker_transport(url, client_id=client_id or _new_client_id(prefix))


def _new_client_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


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
        url = tool_broker(broker_url)
        transport = broker_transport(url, client_id=client_id or _new_client_id(CLIENT_ID_PREFIX))
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
