"""MQTT v5 request/response: the requester side (response topic + correlation data + timeout)."""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Mapping
from typing import Any

from mesh import codec
from mesh.contract import Contract
from mesh.errors import ContractError, DecodeError, RequestTimeout
from mesh.metrics import Metrics
from mesh.transport import Inbound, Transport

log = logging.getLogger("mesh.rpc")

TRACE_PROPERTY = "trace_id"
# When the requester stops waiting (Unix time): an agent does not act on a request it receives
# after that (the broker's Message Expiry covers queued copies; this covers redeliveries).
EXPIRES_PROPERTY = "expires_at"


def reply_topic_for(username: str, client_id: str) -> str:
    return f"reply/{username}/{client_id}"


class Requester:
    """Sends requests declared in the contract and matches replies by correlation data."""

    def __init__(
        self,
        *,
        principal: str,
        client_id: str,
        transport: Transport,
        contract: Contract,
        metrics: Metrics | None = None,
        reply_topic: str | None = None,
    ) -> None:
        self.principal = principal
        self.reply_topic = reply_topic or reply_topic_for(principal, client_id)
        self._transport = transport
        self._contract = contract
        self._metrics = metrics
        self._pending: dict[bytes, asyncio.Future[Inbound]] = {}

    @property
    def reply_filter(self) -> str:
        return self.reply_topic

    def deliver(self, msg: Inbound) -> bool:
        """Resolve the waiting request for a reply; False when nobody waits (late or stray)."""
        if msg.correlation_data is None:
            return False
        fut = self._pending.pop(msg.correlation_data, None)
        if fut is None or fut.done():
            return False
        fut.set_result(msg)
        return True

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
        """Send request `key` (its topic parameters in `params`) and return its decoded reply;
        RequestTimeout when none comes. A retry passes the `correlation` of the first attempt:
        with the same reply topic it is the same request, counted once even without a key."""
        entry = self._contract.entry(key)
        if entry.reply_schema is None:
            raise ContractError(f"{key!r} is not a request/response pair")
        _, topic = self._contract.resolve(self.principal, key, **(params or {}))
        wait = timeout if timeout is not None else float(entry.timeout_s or 5.0)
        correlation = correlation or uuid.uuid4().bytes
        fut: asyncio.Future[Inbound] = asyncio.get_running_loop().create_future()
        self._pending[correlation] = fut
        try:
            async with asyncio.timeout(wait):
                await self._transport.publish(
                    topic,
                    codec.encode_value(payload, entry.format),
                    qos=entry.qos,
                    response_topic=self.reply_topic,
                    correlation_data=correlation,
                    user_properties={
                        TRACE_PROPERTY: trace_id or uuid.uuid4().hex,
                        EXPIRES_PROPERTY: f"{time.time() + wait:.3f}",
                    },
                    # The request expires with our wait: a broker holding it for a responder
                    # that is away drops it, instead of having it executed long after.
                    expiry_s=max(1, math.ceil(wait)),
                    timeout=wait,
                )
                if self._metrics is not None:
                    self._metrics.published.labels(key).inc()
                msg = await fut
        except TimeoutError:
            if self._metrics is not None:
                self._metrics.request_timeouts.labels(key).inc()
            raise RequestTimeout(topic, wait) from None
        finally:
            self._pending.pop(correlation, None)
        try:
            return codec.decode(msg.payload, entry.reply_type)
        except DecodeError as exc:
            raise DecodeError(
                f"reply to {key!r} does not match {entry.reply_schema}: {exc}"
            ) from exc
