"""MQTT v5 transport on gmqtt: with mesh.transport.gmqtt_adapter (where every use of gmqtt's
private attributes is), the only module that imports gmqtt.

What it adds to gmqtt:
- `publish()` is awaitable and returns when the broker has answered a QoS 1 PUBLISH with PUBACK;
  a failure reason code (e.g. 135 Not authorized) raises PublishRefused.
- in-flight publishes are bounded by the broker's receive maximum (gmqtt raises OverflowError
  past it);
- inbound QoS 1 messages are acknowledged only when the async handler returns (manual acks), with
  the reason code it returns;
- bounded inbound work (`Admission`): QoS 1 is bounded by the receive maximum sent in CONNECT;
  a QoS 0 message past the bound is dropped before it is decoded or gets a task (`on_dropped`).
  At most receive maximum + `max_held` messages are in hand at once, whatever a publisher does
  (plus one socket read of packets whose tasks have not started yet);
- subscriptions ask for "retain as published": a retained message published live arrives with
  its retain flag (a retained command is then recognised and refused, see mesh.dispatch);
- durable session (fixed client id, clean start off, session expiry), Last Will, and a resubscribe
  whenever the broker has lost the session; endless reconnect with capped backoff.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import ssl
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import gmqtt
from gmqtt.storage import PersistentStorage

from mesh.backoff import Backoff
from mesh.errors import NotAuthorized, PacketTooLarge, PublishRefused, TransportError
from mesh.transport import gmqtt_adapter as gm
from mesh.transport.base import (
    Admission,
    ConnectHandler,
    DropHandler,
    Inbound,
    MessageHandler,
    Transport,
    Will,
)

log = logging.getLogger("mesh.transport")

MQTT_V5 = gmqtt.constants.MQTTv50


class _QuietClosedSocket(logging.Filter):
    """gmqtt warns on every write to a closing socket; during shutdown and reconnects that is
    expected (unacknowledged publishes stay stored and are resent), so it is not a warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "WRITE TO CLOSED SOCKET" not in record.getMessage()


logging.getLogger("gmqtt.mqtt.protocol").addFilter(_QuietClosedSocket())
_DEFAULT_WINDOW = 19
TAKEN_OVER = b"\x8e"  # DISCONNECT reason code 0x8E: Session taken over


class _AckTrackingStorage(PersistentStorage):  # type: ignore[misc]  # gmqtt has no types
    """gmqtt's in-flight store, extended to resolve one future per message id on PUBACK."""

    def __init__(self) -> None:
        super().__init__()
        self.last_mid: int | None = None
        self.waiters: dict[int, asyncio.Future[int]] = {}

    def push_message(self, mid: int, raw_package: bytes) -> None:
        super().push_message(mid, raw_package)
        self.last_mid = mid

    def acked(self, mid: int, reason_code: int) -> None:
        fut = self.waiters.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(reason_code)

    def clear(self) -> None:
        # The broker started a new session: un-acknowledged publishes are gone for good.
        super().clear()
        for fut in self.waiters.values():
            if not fut.done():
                fut.set_exception(TransportError("broker session lost before PUBACK"))
        self.waiters.clear()


class _CoalescingWriter:
    """Wraps the socket transport: packets written in one loop iteration go out in one send.

    gmqtt writes every packet (PUBLISH, PUBACK, ...) with its own send() syscall; under load a
    group commit releases hundreds of acknowledgements, replies and events at once. Buffering them
    until the loop's next turn costs microseconds of latency and saves most of the syscalls.
    """

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._buf: list[bytes] = []
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes) -> None:
        if not self._buf:
            self._loop.call_soon(self._flush)
        self._buf.append(data)

    def _flush(self) -> None:
        if not self._buf:
            return
        data = b"".join(self._buf)
        self._buf.clear()
        if not self._inner.is_closing():
            self._inner.write(data)

    def close(self) -> None:
        self._flush()
        self._inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _coalescing(raw: Any) -> Any:
    return raw if isinstance(raw, _CoalescingWriter) else _CoalescingWriter(raw)


class _Window:
    """Bounds in-flight QoS>0 publishes to the broker's receive maximum (no lock on the fast
    path: a free slot is taken synchronously; waiters queue in order)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def try_acquire(self) -> bool:
        if self.used < self.limit and not self._waiters:
            self.used += 1
            return True
        return False

    async def acquire(self) -> None:
        if self.try_acquire():
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut  # the releaser counted the slot for us
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.release()  # granted while we were cancelled: hand it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
            raise

    def release(self) -> None:
        self.used -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.used < self.limit:
            fut = self._waiters.popleft()
            if not fut.done():
                self.used += 1
                fut.set_result(None)

    def resize(self, limit: int) -> None:
        self.limit = limit
        self._wake()


class MqttTransport:
    """One MQTT v5 connection (implements `Transport`). Construct, set handlers and
    subscriptions, then `await connect()`."""

    def __init__(
        self,
        *,
        client_id: str,
        host: str,
        port: int,
        username: str | None = None,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
        clean_start: bool = False,
        session_expiry_s: int = 7 * 24 * 3600,
        will: Will | None = None,
        receive_maximum: int = 1000,
        max_inflight: int = 1000,
        keepalive_s: int = 30,
        admission: Admission | None = None,
    ) -> None:
        self.client_id = client_id
        self.host = host
        self.port = port
        self._account = (username, password)
        self._tls = tls
        self._keepalive = keepalive_s
        self._max_inflight = max_inflight
        self._session_expiry_s = session_expiry_s
        self._storage = _AckTrackingStorage()
        self._client = self._gmqtt_client(clean_start, will, receive_maximum)
        gm.on_puback(self._client, self._handle_puback)
        self._handle_publish_packet = gm.on_publish(self._client, self._admit)
        self.admission = admission or Admission()
        self.on_dropped: DropHandler | None = None
        self._window = _Window(_DEFAULT_WINDOW)
        self._deadlines: dict[asyncio.Future[int], float] = {}
        self._expirer: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._subscriptions: list[str] = []
        self._first_subscribe = True  # see _subscribe_now
        self._subacks: dict[int, asyncio.Future[tuple[int, ...]]] = {}
        self._refused: dict[str, int] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._max_packet: int | None = None
        self.on_message: MessageHandler | None = None
        self.on_connect: ConnectHandler | None = None
        self.on_taken_over: Callable[[], None] | None = None
        self.on_lost: Callable[[], None] | None = None
        self.taken_over = False
        self._reconnects = 0
        self._reconnect_pacing = Backoff(1.0, 10.0)
        self._ever_connected = False
        self._closed = False

    def _gmqtt_client(self, clean_start: bool, will: Will | None, receive_maximum: int) -> Any:
        """The gmqtt client: manual acknowledgements, endless reconnects, our callbacks."""
        will_message = (
            gmqtt.Message(will.topic, will.payload, qos=will.qos, retain=will.retain)
            if will
            else None
        )
        client = gmqtt.Client(
            self.client_id,
            clean_session=clean_start,
            optimistic_acknowledgement=False,
            will_message=will_message,
            persistent_storage=self._storage,
            session_expiry_interval=self._session_expiry_s,
            receive_maximum=receive_maximum,
        )
        # gmqtt's own delay between attempts is fixed; the pacing is ours (_guard_reconnect).
        client.set_config({"reconnect_retries": -1, "reconnect_delay": 0})
        username, password = self._account
        if username is not None:
            client.set_auth_credentials(username, password)
        client.on_message = self._on_message
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_suback
        client.on_unsubscribe = self._on_unsuback
        gm.wrap_connect(client, self._guard_reconnect)
        return client

    def _guard_reconnect(self, create: Any) -> Any:
        """Every reconnect attempt waits a jittered, growing delay (0.5-1 s, then up to 2, 4, 8,
        10 s; reset by a successful connect): clients that lost one broker together do not come
        back in lockstep, and an agent whose session was taken over notices it (presence still
        up) before its next attempt throws the other process off. And gmqtt's reconnect loop
        connects without asking whether the client was disconnected meanwhile: a ghost
        connection (with a durable client id, one that takes the session over from a new
        instance). Refuse to connect once `disconnect()` ran."""

        def closed() -> bool:
            return self._closed

        async def guarded(*args: Any, **kwargs: Any) -> Any:
            if closed():
                gm.stop_reconnecting(self._client)  # and the reconnect loop ends here
                raise OSError("transport disconnected")
            if self._ever_connected:
                await asyncio.sleep(self._reconnect_pacing.next_delay())
                if closed():
                    gm.stop_reconnecting(self._client)
                    raise OSError("transport disconnected")
            connection = await create(*args, **kwargs)
            if closed():  # disconnected while this connection was being made
                await connection.close()
                raise OSError("transport disconnected")
            return connection

        return guarded

    @property
    def url(self) -> str:
        return f"{'mqtts' if self._tls else 'mqtt'}://{self.host}:{self.port}"

    def sibling(self, client_id: str, *, will: Will | None = None) -> MqttTransport:
        username, password = self._account
        return MqttTransport(
            client_id=client_id,
            host=self.host,
            port=self.port,
            username=username,
            password=password,
            tls=self._tls,
            clean_start=True,
            session_expiry_s=0,
            will=will,
        )

    # -- connection ----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def reconnects(self) -> int:
        return self._reconnects

    @property
    def max_packet_size(self) -> int | None:
        """The broker's Maximum Packet Size (CONNACK), None when it sets no limit."""
        return self._max_packet

    @property
    def refused_filters(self) -> list[str]:
        return sorted(self._refused)

    async def connect(self, timeout: float = 10.0) -> None:
        """Connect once; the transport then reconnects by itself until `disconnect()`."""
        self._closed = False
        try:
            async with asyncio.timeout(timeout):
                await self._client.connect(
                    self.host,
                    self.port,
                    ssl=self._tls or False,
                    version=MQTT_V5,
                    keepalive=self._keepalive,
                )
                await self._connected.wait()
        except TimeoutError as exc:
            raise TransportError(f"no connection to {self.url} within {timeout}s") from exc
        except ssl.SSLError as exc:
            hint = (
                " (LIFEOPS_BROKER_CA_FILE names the CA that signed the broker's certificate)"
                if "CERTIFICATE_VERIFY_FAILED" in str(exc)
                else ""
            )
            raise TransportError(f"TLS handshake with {self.url} failed: {exc}{hint}") from exc
        except OSError as exc:
            raise TransportError(f"cannot connect to {self.url}: {exc}") from exc
        except gmqtt.mqtt.handler.MQTTConnectError as exc:
            if gm.refusal_code(exc) in (4, 5, 0x86, 0x87):
                who = self._account[0] or "(no user name)"
                raise NotAuthorized(
                    f"{self.host}:{self.port} refused user {who!r}: wrong user name or password"
                ) from exc
            raise TransportError(f"broker refused {self.client_id!r}: {exc}") from exc

    async def wait_connected(self, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                await self._connected.wait()
        except TimeoutError as exc:
            raise TransportError(f"broker not connected within {timeout}s") from exc

    async def disconnect(self, timeout: float = 5.0, *, end_session: bool = False) -> None:
        """DISCONNECT (no Last Will). `end_session` sends Session Expiry Interval 0, so the
        broker drops the session and stops queueing (and routing shared messages) to it."""
        was_connected = self._connected.is_set()
        self._closed = True
        self._connected.clear()
        props: dict[str, Any] = {}
        if end_session and self._session_expiry_s > 0:
            props["session_expiry_interval"] = 0
        with contextlib.suppress(Exception):
            async with asyncio.timeout(timeout):
                if was_connected or self._client.is_connected:
                    await self._client.disconnect(**props)
                else:
                    await self._client.disconnect()
        for task in list(self._tasks):
            task.cancel()
        if self._expirer is not None:
            self._expirer.cancel()
            self._expirer = None

    def _on_connect(self, client: Any, flags: int, rc: int, properties: dict[str, Any]) -> None:
        session_present = bool(flags)
        # Writes, and the close (so what is buffered, e.g. a DISCONNECT, goes out first),
        # through one coalescing writer per socket.
        gm.wrap_socket(self._client, _coalescing)
        self._reconnect_pacing.reset()
        connack = gm.connack_properties(self._client)
        values = connack.get("receive_maximum")
        broker_max = values[0] if values else 65535
        limit = max(1, min(self._max_inflight, broker_max - 1))
        packet = connack.get("maximum_packet_size")
        self._max_packet = int(packet[0]) if packet else None
        if self._ever_connected:
            self._reconnects += 1
        self._ever_connected = True
        self._spawn(self._after_connect(session_present, limit))

    async def _after_connect(self, session_present: bool, limit: int) -> None:
        self._window.resize(limit)
        if self._subscriptions:
            # Always subscribe again (retained messages only for new subscriptions): the
            # session the broker kept may be an old snapshot, or predate a new filter.
            try:
                await self._subscribe_now(self._subscriptions, timeout=10)
            except TransportError as exc:
                log.warning("subscribing after connect failed: %s", exc)
        self._connected.set()
        if self.on_connect is not None:
            try:
                await self.on_connect(session_present)
            except Exception:
                log.exception("on_connect handler failed")

    def _on_disconnect(self, client: Any, packet: Any, exc: Any = None) -> None:
        if isinstance(packet, bytes | bytearray) and packet[:1] == TAKEN_OVER:
            # Another connection with our client id took the session over. Reconnecting would
            # take it back, and the two would throw each other off forever: stop here.
            log.error("client id %s was taken over by another connection; not reconnecting",
                      self.client_id)  # fmt: skip
            self._closed = True
            self.taken_over = True
            if self.on_taken_over is not None:
                self.on_taken_over()
        elif self._connected.is_set():
            log.warning("lost broker connection (%s); reconnecting", self.client_id)
            if self.on_lost is not None and not self._closed:
                self.on_lost()
        self._connected.clear()
        for fut in self._subacks.values():
            if not fut.done():
                fut.set_exception(TransportError("connection lost before SUBACK"))
        self._subacks.clear()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- publish -------------------------------------------------------------------------------

    def _handle_puback(self, cmd: int, packet: bytes) -> None:
        (mid,) = struct.unpack("!H", packet[:2])
        reason_code = packet[2] if len(packet) > 2 else 0
        gm.release_publish_id(self._client, mid)
        self._storage.acked(mid, reason_code)

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
        """Publish and, for QoS 1, wait for the broker's PUBACK (raising on a failure code).

        A packet larger than the broker's Maximum Packet Size is refused here (PacketTooLarge)
        and never sent: the broker would close the connection, and a stored QoS 1 packet would
        be resent after every reconnect, forever."""
        props: dict[str, Any] = {}
        if response_topic is not None:
            props["response_topic"] = response_topic
        if correlation_data is not None:
            props["correlation_data"] = correlation_data
        if user_properties:
            props["user_property"] = list(user_properties.items())
        if expiry_s is not None:
            props["message_expiry_interval"] = max(1, int(expiry_s))
        if self._max_packet is not None:
            size = publish_packet_size(
                topic, payload, qos, response_topic, correlation_data, user_properties, expiry_s
            )
            if size > self._max_packet:
                raise PacketTooLarge(topic, size, self._max_packet)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            if qos == 0:
                if not self._connected.is_set():
                    async with asyncio.timeout_at(deadline):
                        await self._connected.wait()
                self._client.publish(topic, payload, qos=0, retain=retain, **props)
                return
            reason = await self._publish_acked(topic, payload, qos, retain, props, deadline)
        except TimeoutError as exc:
            raise TransportError(f"no PUBACK for {topic!r} within {timeout}s") from exc
        if reason >= 0x80:
            raise PublishRefused(topic, reason)

    async def _publish_acked(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        props: dict[str, Any],
        deadline: float,
    ) -> int:
        # Fast path without timers: connected and a free slot in the window. Only the waits
        # that really wait get a timeout of their own; the PUBACK's is enforced by one sweeper
        # for all publishes (see _expire_loop).
        loop = asyncio.get_running_loop()
        if not self._window.try_acquire():
            async with asyncio.timeout_at(deadline):
                await self._window.acquire()
        try:
            if not self._connected.is_set():
                async with asyncio.timeout_at(deadline):
                    await self._connected.wait()
            fut: asyncio.Future[int] = loop.create_future()
            self._client.publish(topic, payload, qos=qos, retain=retain, **props)
            mid = self._storage.last_mid
            assert mid is not None
            self._storage.waiters[mid] = fut
            self._deadlines[fut] = deadline
            if self._expirer is None:
                self._expirer = loop.create_task(self._expire_loop(), name="puback-timeouts")
            try:
                return await fut
            finally:
                self._deadlines.pop(fut, None)
        finally:
            self._window.release()

    async def _expire_loop(self, interval: float = 0.1) -> None:
        """Fail the PUBACK waits whose deadline has passed (one timer for all publishes)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            for fut, deadline in list(self._deadlines.items()):
                if deadline <= now and not fut.done():
                    fut.set_exception(TimeoutError())

    # -- subscribe -----------------------------------------------------------------------------

    async def subscribe(self, filters: list[str], timeout: float = 10.0) -> None:
        """Subscribe now when connected (waiting for the SUBACK), else at connect. Filters the
        broker refuses are logged and listed in `refused_filters`, not raised: the rest work."""
        new = [f for f in filters if f not in self._subscriptions]
        self._subscriptions.extend(new)
        if new and self.connected:
            await self._subscribe_now(new, timeout=timeout)

    async def _subscribe_now(self, filters: list[str], *, timeout: float) -> None:
        # Retain handling 1: retained messages only for a subscription that did not exist, so a
        # reconnect does not replay every retained state. But this object's first SUBSCRIBE asks
        # for them (0) even when the broker kept the durable session's subscriptions: a new
        # process has forgotten what the last one learnt from them (peers' availability, states).
        # Retain as published: a retained message published live keeps its retain flag.
        handling = 0 if self._first_subscribe else 1
        subs = [
            gmqtt.Subscription(f, qos=1, retain_handling_options=handling, retain_as_published=True)
            for f in filters
        ]
        wanted = set(filters)  # gmqtt appends to its list on every SUBSCRIBE: keep one each
        self._client.subscriptions = [
            s for s in self._client.subscriptions if s.topic not in wanted
        ]
        mid = self._client.subscribe(subs)
        fut: asyncio.Future[tuple[int, ...]] = asyncio.get_running_loop().create_future()
        self._subacks[mid] = fut
        try:
            async with asyncio.timeout(timeout):
                codes = await fut
        except TimeoutError as exc:
            raise TransportError(f"no SUBACK within {timeout}s for {filters}") from exc
        finally:
            self._subacks.pop(mid, None)
        self._first_subscribe = False
        for f, code in zip(filters, codes, strict=False):
            if code >= 0x80:
                if f not in self._refused:
                    log.error("broker refused subscription %r (reason code %d)", f, code)
                self._refused[f] = code
            else:
                self._refused.pop(f, None)

    async def unsubscribe(self, filters: list[str], timeout: float = 10.0) -> None:
        gone = [f for f in filters if f in self._subscriptions]
        self._subscriptions = [f for f in self._subscriptions if f not in gone]
        if not gone or not self.connected:
            return
        mid = self._client.unsubscribe(gone)
        fut: asyncio.Future[tuple[int, ...]] = asyncio.get_running_loop().create_future()
        self._subacks[mid] = fut  # UNSUBACK resolves it as SUBACK does
        try:
            async with asyncio.timeout(timeout):
                await fut
        except TimeoutError as exc:
            raise TransportError(f"no UNSUBACK within {timeout}s for {gone}") from exc
        finally:
            self._subacks.pop(mid, None)

    def _on_unsuback(self, client: Any, mid: int, codes: tuple[int, ...]) -> None:
        fut = self._subacks.get(mid)
        if fut is not None and not fut.done():
            fut.set_result(tuple(codes))

    def _on_suback(self, client: Any, mid: int, qos: tuple[int, ...], properties: Any) -> None:
        fut = self._subacks.get(mid)
        if fut is not None and not fut.done():
            fut.set_result(tuple(qos))

    # -- receive -------------------------------------------------------------------------------

    def _admit(self, cmd: int, packet: bytes) -> None:
        """An inbound PUBLISH, before gmqtt parses it and starts a task for it: a QoS 0 message
        past the bound is dropped here, at the cost of reading its topic."""
        # ($SYS topics are the broker's own, e.g. what it drops: never one of a flood's)
        if cmd & 0x06 == 0 and packet[2:3] != b"$":
            why = self.admission.qos0()
            if why is not None:
                if self.on_dropped is not None:
                    (size,) = struct.unpack_from("!H", packet)
                    self.on_dropped(packet[2 : 2 + size].decode("utf-8", "replace"), why)
                return
        self._handle_publish_packet(cmd, packet)

    async def _on_message(
        self, client: Any, topic: str | bytes, payload: bytes, qos: int, properties: dict[str, Any]
    ) -> int:
        size = len(payload)
        self.admission.taken(size)
        try:
            return await self._handle_inbound(topic, payload, qos, properties)
        finally:
            self.admission.done(size)

    async def _handle_inbound(
        self, topic: str | bytes, payload: bytes, qos: int, properties: dict[str, Any]
    ) -> int:
        if isinstance(topic, bytes):
            topic = topic.decode("utf-8", "replace")
        expiry = _first(properties.get("message_expiry_interval"))
        msg = Inbound(
            topic=topic,
            payload=payload,
            qos=qos,
            retain=bool(properties.get("retain")),
            dup=bool(properties.get("dup")),
            response_topic=_first(properties.get("response_topic")),
            correlation_data=_first(properties.get("correlation_data")),
            user_properties=dict(properties.get("user_property") or []),
            expiry_s=int(expiry) if expiry is not None else None,
        )
        if self.on_message is None:
            return 0
        try:
            return await self.on_message(msg)
        except Exception:
            # No PUBACK at all (a failure code would make the broker discard the message): it
            # stays in flight and the broker redelivers it after the next reconnect.
            log.exception("message handler failed on %s; left unacknowledged", topic)
            raise


def tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """A client TLS context that verifies the broker: against `ca_file` (e.g. a private CA)
    when given, else the system's trusted CAs."""
    return ssl.create_default_context(cafile=ca_file)


def _varint_len(n: int) -> int:
    size = 1
    while n >= 128:
        n //= 128
        size += 1
    return size


def publish_packet_size(
    topic: str,
    payload: bytes,
    qos: int,
    response_topic: str | None = None,
    correlation_data: bytes | None = None,
    user_properties: dict[str, str] | None = None,
    expiry_s: int | None = None,
) -> int:
    """The size in bytes of the MQTT v5 PUBLISH packet these arguments make (what the broker
    compares with its Maximum Packet Size)."""
    props = 0
    if response_topic is not None:
        props += 3 + len(response_topic.encode())
    if correlation_data is not None:
        props += 3 + len(correlation_data)
    if expiry_s is not None:
        props += 5
    for k, v in (user_properties or {}).items():
        props += 5 + len(k.encode()) + len(v.encode())
    remaining = 2 + len(topic.encode()) + (2 if qos else 0)
    remaining += _varint_len(props) + props + len(payload)
    return 1 + _varint_len(remaining) + remaining


_check: type[Transport] = MqttTransport  # MqttTransport implements the Transport protocol


def _first(values: Any) -> Any:
    if not values:
        return None
    value = values[0]
    if isinstance(value, bytes | bytearray) and not value:
        return None
    return value
