"""An in-process MQTT v5 broker and its transport: the `Transport` seam's twin for fast tests.

What it keeps of a real broker (Mosquitto's behaviour where the standard leaves a choice):
QoS 1 with acknowledgement when the handler returns, redelivery (dup) of what was not
acknowledged when a durable session reconnects, queueing for offline durable sessions,
retained messages (delivered with the retain flag to new subscriptions, cleared by an empty
payload), `+`/`#` filters, shared subscriptions `$share/<group>/...` served round robin among
the group's sessions (offline ones included, as Mosquitto does), Last Will on a lost connection,
session takeover by a second connection with the same client id, Message Expiry, an optional
ACL (`allow(username, topic, "read"|"write")`, refusals answered with reason code 135), and
an optional Maximum Packet Size.

Subscriptions are "retain as published" (as MqttTransport asks): a retained message published
live reaches subscribers with its retain flag. A QoS 0 message past the transport's `Admission`
bound is dropped unhandled (`on_dropped`, reason `overload`), as MqttTransport does.

What it leaves out: QoS 2, persistence to disk, topic aliases, flow control of QoS 1. The behaviour
suites that run on it also run against the real Mosquitto, which is the run that counts.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
from collections.abc import Callable

import msgspec

from mesh.errors import PacketTooLarge, PublishRefused, TransportError
from mesh.topics import matches, split_shared
from mesh.transport.base import (
    Admission,
    ConnectHandler,
    DropHandler,
    Inbound,
    MessageHandler,
    Transport,
    Will,
)
from mesh.transport.mqtt import publish_packet_size

log = logging.getLogger("mesh.transport.memory")

Allow = Callable[[str | None, str, str], bool]
NOT_AUTHORIZED = 0x87


class _Message(msgspec.Struct, kw_only=True):
    topic: str
    payload: bytes
    qos: int
    retain: bool = False
    response_topic: str | None = None
    correlation_data: bytes | None = None
    user_properties: dict[str, str] = {}
    expires_at: float | None = None


class _Session:
    def __init__(self, client_id: str, username: str | None, expiry_s: int) -> None:
        self.client_id = client_id
        self.username = username
        self.expiry_s = expiry_s
        self.filters: set[str] = set()
        self.queue: collections.deque[_Message] = collections.deque()
        self.inflight: dict[int, _Message] = {}
        self.transport: MemoryTransport | None = None


class MemoryBroker:
    """One in-process broker; make connections with `transport()`."""

    def __init__(self, *, allow: Allow | None = None, max_packet_size: int | None = None) -> None:
        self.allow = allow
        self.max_packet_size = max_packet_size
        self._sessions: dict[str, _Session] = {}
        self._retained: dict[str, _Message] = {}
        self._turn: dict[tuple[str, str], int] = collections.defaultdict(int)
        self._mids = itertools.count(1)
        self.published: list[_Message] = []  # everything accepted, in order (for assertions)

    def transport(
        self,
        client_id: str,
        *,
        username: str | None = None,
        clean_start: bool = True,
        session_expiry_s: int = 0,
        will: Will | None = None,
    ) -> MemoryTransport:
        return MemoryTransport(
            self,
            client_id=client_id,
            username=username,
            clean_start=clean_start,
            session_expiry_s=session_expiry_s,
            will=will,
        )

    def retained(self, topic: str) -> bytes | None:
        msg = self._retained.get(topic)
        return msg.payload if msg else None

    async def restart(self, *, lose_sessions: bool = False, lose_retained: bool = False) -> None:
        """Every connection drops and comes back (no Last Will: the broker itself went away);
        optionally as a broker that lost its sessions or its retained messages."""
        live = [s.transport for s in self._sessions.values() if s.transport is not None]
        for t in live:
            t._lost()
        if lose_retained:
            self._retained.clear()
        if lose_sessions:
            self._sessions.clear()
        for t in live:
            await t._attach()

    # -- connections ----------------------------------------------------------------------------

    def _attach(self, t: MemoryTransport) -> bool:
        """Bind `t` to its session; returns `session present`."""
        old = self._sessions.get(t.client_id)
        if old is not None and old.transport is not None and old.transport is not t:
            log.info("client %s already connected, closing old connection", t.client_id)
            taken = old.transport
            taken._lost(taken_over=True)
            self._will(taken)
            if taken.on_taken_over is not None:
                taken.on_taken_over()
        present = old is not None and not t.clean_start
        if not present:
            old = _Session(t.client_id, t.username, t.session_expiry_s)
            self._sessions[t.client_id] = old
        assert old is not None
        old.expiry_s = t.session_expiry_s
        old.transport = t
        return present

    def _detach(self, t: MemoryTransport, *, end_session: bool, will: bool) -> None:
        session = self._sessions.get(t.client_id)
        if session is None or session.transport is not t:
            return
        session.transport = None
        if will:
            self._will(t)
        if end_session or session.expiry_s == 0:
            del self._sessions[t.client_id]

    def _will(self, t: MemoryTransport) -> None:
        if t.will is not None:
            w = t.will
            self._route(_Message(topic=w.topic, payload=w.payload, qos=w.qos, retain=w.retain))

    # -- publish and route ----------------------------------------------------------------------

    def _publish(self, sender: MemoryTransport, msg: _Message) -> int:
        if self.allow is not None and not self.allow(sender.username, msg.topic, "write"):
            return NOT_AUTHORIZED
        self.published.append(msg)
        self._route(msg)
        return 0

    def _route(self, msg: _Message) -> None:
        if msg.retain:
            if msg.payload:
                self._retained[msg.topic] = msg
            else:
                self._retained.pop(msg.topic, None)
        groups: dict[tuple[str, str], list[_Session]] = {}
        for session in list(self._sessions.values()):
            hit = False
            for f in session.filters:
                group, plain = split_shared(f)
                if not matches(plain, msg.topic):
                    continue
                if group is None:
                    hit = True
                else:
                    groups.setdefault((group, plain), []).append(session)
            if hit and self._may_read(session, msg.topic):
                self._enqueue(session, msg, retain=msg.retain)
        for key, members in groups.items():
            members.sort(key=lambda s: s.client_id)
            turn = self._turn[key]
            self._turn[key] = turn + 1
            chosen = members[turn % len(members)]
            if self._may_read(chosen, msg.topic):
                self._enqueue(chosen, msg, retain=msg.retain)

    def _may_read(self, session: _Session, topic: str) -> bool:
        return self.allow is None or self.allow(session.username, topic, "read")

    def _enqueue(self, session: _Session, msg: _Message, *, retain: bool) -> None:
        copy = msgspec.structs.replace(msg, retain=retain)
        if session.transport is not None and session.transport.connected:
            self._deliver(session, copy, dup=False)
        elif session.expiry_s > 0 and msg.qos > 0:
            session.queue.append(copy)

    def _deliver(self, session: _Session, msg: _Message, *, dup: bool) -> None:
        loop = asyncio.get_running_loop()
        if msg.expires_at is not None and msg.expires_at <= loop.time():
            return  # expired while queued: never delivered
        mid = next(self._mids)
        if msg.qos > 0:
            session.inflight[mid] = msg
        assert session.transport is not None
        session.transport._spawn_delivery(session, mid, msg, dup)

    def _subscribe(
        self, t: MemoryTransport, filters: list[str], *, retained: bool = False
    ) -> list[int]:
        """SUBSCRIBE with retain handling 1 (retained messages for a subscription the session did
        not have), or 0 (`retained`: always, as a new process asks; see MqttTransport)."""
        session = self._sessions[t.client_id]
        codes = []
        for f in filters:
            group, plain = split_shared(f)
            if self.allow is not None and not self.allow(t.username, plain, "read"):
                codes.append(NOT_AUTHORIZED)
                continue
            new = retained or f not in session.filters
            session.filters.add(f)
            codes.append(1)
            if new and group is None:
                for topic, msg in list(self._retained.items()):
                    if matches(plain, topic) and self._may_read(session, topic):
                        self._enqueue(session, msg, retain=True)
        return codes

    def _resume(self, session: _Session) -> None:
        """A durable session reconnected: unacknowledged first (dup), then what queued."""
        inflight, session.inflight = list(session.inflight.values()), {}
        for msg in inflight:
            self._deliver(session, msg, dup=True)
        while session.queue:
            self._deliver(session, session.queue.popleft(), dup=False)


class MemoryTransport:
    """A connection to a `MemoryBroker` (implements `Transport`)."""

    def __init__(
        self,
        broker: MemoryBroker,
        *,
        client_id: str,
        username: str | None = None,
        clean_start: bool = True,
        session_expiry_s: int = 0,
        will: Will | None = None,
        admission: Admission | None = None,
    ) -> None:
        self.broker = broker
        self.client_id = client_id
        self.username = username
        self.clean_start = clean_start
        self.session_expiry_s = session_expiry_s
        self.will = will
        self.on_message: MessageHandler | None = None
        self.on_connect: ConnectHandler | None = None
        self.on_taken_over: Callable[[], None] | None = None
        self.on_lost: Callable[[], None] | None = None
        self.on_dropped: DropHandler | None = None
        self.admission = admission or Admission()
        self.taken_over = False
        self._connected = False
        self._active = False
        self._reconnects = 0
        self._ever = False
        self._filters: list[str] = []
        self._refused: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._connected_event = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def reconnects(self) -> int:
        return self._reconnects

    @property
    def max_packet_size(self) -> int | None:
        return self.broker.max_packet_size

    @property
    def refused_filters(self) -> list[str]:
        return sorted(self._refused)

    def sibling(self, client_id: str, *, will: Will | None = None) -> MemoryTransport:
        return MemoryTransport(self.broker, client_id=client_id, username=self.username, will=will)

    async def connect(self, timeout: float = 10.0) -> None:
        self._active = True
        await self._attach()

    async def _attach(self) -> None:
        present = self.broker._attach(self)
        first = not self._ever
        if self._ever:
            self._reconnects += 1
        self._ever = True
        self.clean_start = False  # later reconnects resume the session
        self._connected = True
        self._connected_event.set()
        if self._filters:
            self._apply(self.broker._subscribe(self, self._filters, retained=first))
        session = self.broker._sessions[self.client_id]
        if present:
            self.broker._resume(session)
        if self.on_connect is not None:
            await self.on_connect(present)

    def _lost(self, *, taken_over: bool = False) -> None:
        self._connected = False
        self._connected_event.clear()
        session = self.broker._sessions.get(self.client_id)
        if session is not None and session.transport is self:
            session.transport = None
            if session.expiry_s == 0:
                del self.broker._sessions[self.client_id]
        if taken_over:
            self._active = False
            self.taken_over = True
        elif self.on_lost is not None:
            self.on_lost()

    async def wait_connected(self, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                await self._connected_event.wait()
        except TimeoutError as exc:
            raise TransportError(f"broker not connected within {timeout}s") from exc

    async def disconnect(self, timeout: float = 5.0, *, end_session: bool = False) -> None:
        self._active = False
        if self._connected:
            self._connected = False
            self._connected_event.clear()
            self.broker._detach(self, end_session=end_session, will=False)
        for task in list(self._tasks):
            task.cancel()

    def crash(self) -> None:
        """The connection dies without DISCONNECT: the broker publishes the Last Will."""
        self._active = False
        if self._connected:
            self._connected = False
            self._connected_event.clear()
            self.broker._detach(self, end_session=False, will=True)
        for task in list(self._tasks):
            task.cancel()

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
        limit = self.broker.max_packet_size
        if limit is not None:
            size = publish_packet_size(
                topic, payload, qos, response_topic, correlation_data, user_properties, expiry_s
            )
            if size > limit:
                raise PacketTooLarge(topic, size, limit)
        if not self._connected:
            await self.wait_connected(timeout)
        loop = asyncio.get_running_loop()
        msg = _Message(
            topic=topic,
            payload=payload,
            qos=qos,
            retain=retain,
            response_topic=response_topic,
            correlation_data=correlation_data,
            user_properties=dict(user_properties or {}),
            expires_at=loop.time() + expiry_s if expiry_s is not None else None,
        )
        await asyncio.sleep(0)  # a network hop: let other tasks run, as a real send would
        reason = self.broker._publish(self, msg)
        if reason >= 0x80 and qos > 0:
            raise PublishRefused(topic, reason)

    async def subscribe(self, filters: list[str], timeout: float = 10.0) -> None:
        new = [f for f in filters if f not in self._filters]
        self._filters.extend(new)
        if new and self._connected:
            self._apply(self.broker._subscribe(self, new), new)

    async def unsubscribe(self, filters: list[str], timeout: float = 10.0) -> None:
        self._filters = [f for f in self._filters if f not in filters]
        session = self.broker._sessions.get(self.client_id)
        if session is not None:
            session.filters -= set(filters)

    def _apply(self, codes: list[int], filters: list[str] | None = None) -> None:
        for f, code in zip(filters or self._filters, codes, strict=True):
            if code >= 0x80:
                self._refused[f] = code
            else:
                self._refused.pop(f, None)

    def _spawn_delivery(self, session: _Session, mid: int, msg: _Message, dup: bool) -> None:
        why = self.admission.qos0() if msg.qos == 0 else None
        if why is not None:
            if self.on_dropped is not None:
                self.on_dropped(msg.topic, why)
            return
        size = len(msg.payload)
        self.admission.taken(size)
        task = asyncio.get_running_loop().create_task(self._deliver(session, mid, msg, dup))
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._delivered(t, size))

    def _delivered(self, task: asyncio.Task[None], size: int) -> None:
        self._tasks.discard(task)
        self.admission.done(size)

    async def _deliver(self, session: _Session, mid: int, msg: _Message, dup: bool) -> None:
        left = None
        if msg.expires_at is not None:
            left = max(1, int(msg.expires_at - asyncio.get_running_loop().time()))
        inbound = Inbound(
            topic=msg.topic,
            payload=msg.payload,
            qos=msg.qos,
            retain=msg.retain,
            dup=dup,
            response_topic=msg.response_topic,
            correlation_data=msg.correlation_data,
            user_properties=dict(msg.user_properties),
            expiry_s=left,
        )
        if self.on_message is None:
            session.inflight.pop(mid, None)
            return
        try:
            await self.on_message(inbound)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("message handler failed on %s; left unacknowledged", msg.topic)
            return  # stays in flight: redelivered when the session reconnects
        if self._connected:  # a PUBACK needs a live connection
            session.inflight.pop(mid, None)

    async def __aenter__(self) -> MemoryTransport:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await self.disconnect()


_check: type[Transport] = MemoryTransport  # MemoryTransport implements the Transport protocol
