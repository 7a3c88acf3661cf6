"""What the runtime needs from a broker connection: the `Transport` protocol and its messages.

Two implementations: `MqttTransport` (gmqtt, MQTT v5, the one that counts) and
`MemoryTransport` on a `MemoryBroker` (in-process, for fast unit tests of routing, handlers and
the inbox; the same behaviour suites also run against the real Mosquitto).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import msgspec


class Inbound(msgspec.Struct, kw_only=True):
    """A message received from the broker."""

    topic: str
    payload: bytes
    qos: int
    retain: bool = False
    dup: bool = False
    response_topic: str | None = None
    correlation_data: bytes | None = None
    user_properties: dict[str, str] = {}
    # Seconds left of the publisher's MQTT v5 Message Expiry Interval (None: never expires).
    expiry_s: int | None = None


class Will(msgspec.Struct, kw_only=True):
    """The Last Will the broker publishes when the connection dies without DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


class Admission:
    """Bounded inbound work: whether a QoS 0 message is taken on or dropped unhandled.

    QoS 1 is bounded by the receive maximum the client sends in CONNECT (the broker sends no
    more un-acknowledged ones); QoS 0 has no such bound, so a QoS 0 message is taken on only
    while fewer than `max_held` messages (and `max_held_bytes` of payload) are in hand, and
    within `per_s` a second (a burst of `max_held`): the mesh's own traffic is QoS 1, QoS 0
    comes from automations at a few a second. Dropping one costs reading its topic, so an
    agent consumes a flood as fast as the broker sends it, and the broker's queue for it (and
    with it the wait of a valid request behind the flood) stays short.
    """

    def __init__(
        self, *, max_held: int = 1000, max_held_bytes: int = 16 << 20, per_s: float = 1000.0
    ) -> None:
        self.max_held = max_held
        self.max_held_bytes = max_held_bytes
        self.per_s = per_s
        self.held = 0  # messages in hand (taken on, handler not returned)
        self.held_bytes = 0
        self._tokens = float(max_held)
        self._last = time.monotonic()

    def qos0(self) -> str | None:
        """None when a QoS 0 message may be taken on now, else why not ("overload")."""
        if self.held >= self.max_held or self.held_bytes >= self.max_held_bytes:
            return "overload"
        now = time.monotonic()
        self._tokens = min(float(self.max_held), self._tokens + (now - self._last) * self.per_s)
        self._last = now
        if self._tokens < 1.0:
            return "overload"
        self._tokens -= 1.0
        return None

    def taken(self, size: int) -> None:
        self.held += 1
        self.held_bytes += size

    def done(self, size: int) -> None:
        self.held -= 1
        self.held_bytes -= size


MessageHandler = Callable[[Inbound], Awaitable[int]]
"""Handles one inbound message; the int it returns is the PUBACK reason code (0: success)."""
DropHandler = Callable[[str, str], None]
"""Called for an inbound message dropped unhandled (topic, reason), e.g. a QoS 0 message past the
transport's bound on messages in hand."""
ConnectHandler = Callable[[bool], Awaitable[None]]
"""Called after every (re)connect with the broker's `session present` flag."""


class Transport(Protocol):
    """One broker connection. Construct, set handlers and subscriptions, then `connect()`."""

    client_id: str
    on_message: MessageHandler | None
    on_connect: ConnectHandler | None
    # Called when the broker closed this connection because another one with the same client
    # id connected (DISCONNECT 0x8E); the transport does not reconnect after that.
    on_taken_over: Callable[[], None] | None
    taken_over: bool
    # Called when the connection drops without our own disconnect() (it reconnects by itself).
    on_lost: Callable[[], None] | None
    # Called for each inbound message dropped unhandled (QoS 0 past the bound on held work).
    on_dropped: DropHandler | None

    @property
    def connected(self) -> bool: ...

    @property
    def reconnects(self) -> int:
        """Connections made after the first one."""
        ...

    @property
    def refused_filters(self) -> list[str]:
        """Subscriptions the broker refused (SUBACK failure codes), empty when all granted."""
        ...

    async def connect(self, timeout: float = 10.0) -> None:
        """Connect once; the transport then reconnects by itself until `disconnect()`."""
        ...

    async def wait_connected(self, timeout: float) -> None: ...

    async def disconnect(self, timeout: float = 5.0, *, end_session: bool = False) -> None:
        """Close the connection (no Last Will); `end_session` also ends a durable session."""
        ...

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
        user_properties: dict[str, str] | None = None,
        expiry_s: int | None = None,
        timeout: float = 30.0,
    ) -> None:
        """Publish; for QoS 1, return on PUBACK and raise PublishRefused on a failure code."""
        ...

    async def subscribe(self, filters: list[str], timeout: float = 10.0) -> None:
        """Subscribe (now, or at connect); kept and renewed when the broker loses the session."""
        ...

    async def unsubscribe(self, filters: list[str], timeout: float = 10.0) -> None:
        """Stop receiving on `filters` (and no longer renew them on reconnect)."""
        ...

    def sibling(self, client_id: str, *, will: Will | None = None) -> Transport:
        """A new, not yet connected, clean and non-durable connection with the same account
        (and the Last Will given)."""
        ...
