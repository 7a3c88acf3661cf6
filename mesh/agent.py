"""Agent lifecycle: store, broker session, availability, routing, replies and dead letters.

An agent module provides an `AgentApp` (its name, route table and migrations); `Agent` runs it.
The constructor does nothing; `start()` opens the store, migrates, connects (durable session,
Last Will), publishes `online`, subscribes, and starts the group committer and outbox relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mesh import codec, dlq, inbox, outbox, receipts, state
from mesh.broker.acl import DROPPED
from mesh.contract import Contract, default_contract
from mesh.errors import ContractError, DecodeError, PublishRefused, TransportError
from mesh.http import HttpEndpoint
from mesh.inbox import Delivery, GroupCommitter, Route
from mesh.logs import agent_var, trace_id_var
from mesh.metrics import Metrics
from mesh.outbox import OutboxRecord, OutboxRelay
from mesh.rpc import TRACE_PROPERTY, Requester
from mesh.schemas import Check, ErrorInfo, ErrorReply, HealthReport, Reply
from mesh.settings import Settings
from mesh.store import Migration, Store, open_store
from mesh.transport import Inbound, Transport, Will

log = logging.getLogger("mesh.agent")
lifecycle = logging.getLogger("mesh.lifecycle")  # start/stop lines, logged at any level

RUNTIME_MIGRATIONS: dict[str, Sequence[Migration]] = {
    "mesh_inbox": inbox.MIGRATIONS,
    "mesh_outbox": outbox.MIGRATIONS,
    "mesh_dlq": dlq.MIGRATIONS,
    "mesh_receipts": receipts.MIGRATIONS,
    "mesh_state": state.MIGRATIONS,
}


class AgentApp(msgspec.Struct, kw_only=True):
    """What an agent package provides to the runtime."""

    name: str
    routes: list[Route]
    migrations: Sequence[Migration] = ()
    on_start: Callable[[Agent], Awaitable[None]] | None = None
    on_stop: Callable[[Agent], Awaitable[None]] | None = None
    on_receipt: receipts.OnReceipt | None = None
    after_receipt: receipts.AfterReceipt | None = None
    # Agents whose availability this one's health depends on.
    depends_on: tuple[str, ...] = ()
    # Called when another agent's availability changes (name, online).
    on_peer_status: Callable[[str, bool], Awaitable[None]] | None = None
    # Refreshes the app's own gauges before a scrape.
    collect: Callable[[Agent], Awaitable[None]] | None = None
    # The contract this agent runs on (default: topics.toml as it is).
    contract: Contract | None = None


class Agent:
    def __init__(
        self,
        settings: Settings,
        app: AgentApp,
        *,
        contract: Contract | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.app = app
        self.name = app.name
        self.contract = contract or app.contract or default_contract()
        self.metrics = metrics or Metrics()
        self.principal = settings.broker.username or self.name
        self.store: Store = open_store(settings.db_url)
        self.transport = Transport(
            client_id=settings.client_id,
            host=settings.broker.host,
            port=settings.broker.port,
            username=settings.broker.username,
            password=settings.broker.password,
            session_expiry_s=settings.session_expiry_s,
            will=Will(topic=self.status_topic, payload=b"offline", qos=1, retain=True),
        )
        self.relay = OutboxRelay(self.store, self._publish_record)
        self.states = state.StatePublisher(self.store, self._publish_state)
        self.requester = Requester(
            principal=self.principal,
            client_id=settings.client_id,
            transport=self.transport,
            contract=self.contract,
            metrics=self.metrics,
        )
        self.receipts = receipts.ReceiptOutbox(
            agent=self.name,
            store=self.store,
            requester=self.requester,
            contract=self.contract,
            metrics=self.metrics,
        )
        self.receipts.on_receipt = app.on_receipt
        self.receipts.after_receipt = app.after_receipt
        self.receipts.on_stored = self.states.changed
        self.committer = GroupCommitter(
            agent=self.name,
            store=self.store,
            contract=self.contract,
            relay=self.relay,
            metrics=self.metrics,
            batch_max=settings.batch_max,
            failpoint=settings.failpoint,
            receipts=self.receipts,
            on_state_changed=self.states.changed,
        )
        self.dead_letters = dlq.DeadLetterSink(
            self.name, self.store, self._publish_dlq, self.metrics
        )
        self._routes = {r.key: r for r in app.routes}
        self._check_routes()
        self._started = False
        self.peers: dict[str, bool] = {}
        self._health_task: asyncio.Task[None] | None = None
        self._state_task: asyncio.Future[None] | None = None
        self.http: HttpEndpoint | None = None
        self._sweep_task: asyncio.Future[int] | None = None

    @property
    def status_topic(self) -> str:
        return self.contract.topic("status", agent=self.name)

    def _check_routes(self) -> None:
        for key in self._routes:
            entry = self.contract.entry(key)
            if self.name not in entry.subscribers:
                raise ContractError(f"{self.name} routes {key!r} but is not one of its subscribers")

    def subscriptions(self) -> list[str]:
        filters = []
        for key in self._routes:
            entry = self.contract.entry(key)
            f = self.contract.subscription(key)  # {agent} as +: every agent's status
            if self.settings.share_group and entry.kind in ("event", "request"):
                f = f"$share/{self.settings.share_group}/{f}"
            filters.append(f)
        filters.append(self.requester.reply_filter)
        if "status" not in self._routes:
            filters.append(self.contract.subscription("status"))  # every agent's availability
        filters.append(DROPPED)
        # Overlapping filters would bring a message once per filter (homeassistant/status is also
        # +/status): keep only the widest.
        return [f for f in filters if not any(g != f and covers(g, f) for g in filters)]

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self, timeout: float = 30.0) -> None:
        token = agent_var.set(self.name)  # tasks created while starting log as this agent
        try:
            await self._start(timeout)
        finally:
            agent_var.reset(token)

    async def _start(self, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            await self.store.open()
            for component, migrations in RUNTIME_MIGRATIONS.items():
                await self.store.migrate(component, migrations)
            if self.app.migrations:
                await self.store.migrate(self.name, self.app.migrations)
            self.transport.on_message = self._on_message
            self.transport.on_connect = self._on_connect
            await self.committer.start()
            await self.transport.subscribe(self.subscriptions())
            await self.transport.connect(timeout=timeout)
            await self.relay.start()
            await self.states.start()
            await self.receipts.start()
            self._health_task = asyncio.create_task(self._health_loop(), name="health")
            if self.settings.metrics_port is not None:
                self.http = HttpEndpoint(
                    {"/metrics": self._metrics_page, "/healthz": self._health_page},
                    self.settings.metrics_bind,
                    self.settings.metrics_port,
                )
                await self.http.start()
            if self.app.on_start is not None:
                await self.app.on_start(self)
        self._started = True
        lifecycle.info(
            "%s started (broker %s, db %s)", self.name, self.settings.broker, self.store.dialect
        )

    async def stop(self, timeout: float = 10.0) -> None:
        try:
            async with asyncio.timeout(timeout):
                if self.app.on_stop is not None:
                    await self.app.on_stop(self)
                await self.receipts.stop()
                await self.states.stop()
                await self.relay.stop(timeout=timeout / 2)
                if self.transport.connected:
                    try:
                        await self.transport.publish(
                            self.status_topic, b"offline", qos=1, retain=True, timeout=2
                        )
                    except TransportError as exc:
                        log.warning("could not publish offline: %s", exc)
        except TimeoutError:
            log.warning("%s: clean stop timed out", self.name)
        await self.committer.stop()
        if self._health_task is not None:
            self._health_task.cancel()
        if self.http is not None:
            await self.http.stop()
        await self.transport.disconnect()
        await self.store.close()
        self.metrics.connected.set(0)
        lifecycle.info("%s stopped", self.name)

    async def _on_connect(self, session_present: bool) -> None:
        self.metrics.connected.set(1)
        if self.transport.reconnects:
            self.metrics.reconnects.inc()
        try:
            await self.transport.publish(
                self.status_topic, b"online", qos=1, retain=True, timeout=5
            )
        except TransportError as exc:
            log.warning("could not publish online: %s", exc)
        if self._started:
            self._sweep_task = asyncio.ensure_future(self.relay.sweep())
            self.receipts.reconnected()
            if not session_present:  # the broker may have lost retained messages too
                self._state_task = asyncio.ensure_future(self.states.republish_all())

    # -- publishing ----------------------------------------------------------------------------

    async def publish(
        self, key: str, payload: Any, *, trace_id: str | None = None, **params: str
    ) -> None:
        """Publish an event by contract key right away (not through the outbox)."""
        entry = self.contract.entry(key)
        if self.name not in entry.publishers:
            raise ContractError(f"{self.name} may not publish {key!r} ({entry.topic})")
        topic = self.contract.topic(key, agent=self.name, **params)
        if not self.contract.publisher_allowed(self.name, topic):
            # e.g. a user called "get": stats/character/get is the request topic, not a state
            raise ContractError(f"{topic!r} is not {key!r}; {self.name} may not publish there")
        props = {TRACE_PROPERTY: trace_id} if trace_id else None
        await self.transport.publish(
            topic,
            codec.encode_value(payload, entry.format),
            qos=entry.qos,
            retain=entry.retain,
            user_properties=props,
        )
        self.metrics.published.labels(key).inc()

    async def _publish_record(self, rec: OutboxRecord) -> None:
        if not self.contract.publisher_allowed(self.name, rec.topic):
            raise ContractError(f"{self.name} may not publish to {rec.topic!r}")
        props = {TRACE_PROPERTY: rec.trace_id} if rec.trace_id else None
        await self.transport.publish(
            rec.topic, rec.payload, qos=rec.qos, retain=rec.retain, user_properties=props
        )
        self.metrics.published.labels(rec.topic_key).inc()

    async def _publish_state(
        self, topic: str, key: str, payload: bytes, trace_id: str | None
    ) -> None:
        if not self.contract.publisher_allowed(self.name, topic):
            raise ContractError(f"{self.name} may not publish to {topic!r}")
        props = {TRACE_PROPERTY: trace_id} if trace_id else None
        await self.transport.publish(topic, payload, qos=1, retain=True, user_properties=props)
        self.metrics.published.labels(key).inc()

    async def _publish_dlq(self, body: bytes) -> None:
        await self.transport.publish(self.contract.topic("dlq", agent=self.name), body, qos=1)
        self.metrics.published.labels("dlq").inc()

    async def _reply(self, msg: Inbound, reply: Reply, request: Any, trace_id: str) -> None:
        if not msg.response_topic:
            return
        transaction = getattr(request, "transaction", None)
        if transaction is not None and reply.transaction is None:
            reply = msgspec.structs.replace(reply, transaction=transaction)
        try:
            await self.transport.publish(
                msg.response_topic,
                codec.encode(reply),
                qos=1,
                correlation_data=msg.correlation_data,
                user_properties={TRACE_PROPERTY: trace_id},
                timeout=10,
            )
            self.metrics.published.labels("reply").inc()
        except PublishRefused as exc:
            log.warning(
                "reply to %s refused by the broker (reason %d): response topics must be "
                "under reply/<username>/",
                msg.response_topic,
                exc.reason_code,
            )
        except TransportError as exc:
            log.warning("reply to %s not delivered: %s", msg.response_topic, exc)

    async def _fail(
        self, msg: Inbound, code: str, message: str, trace_id: str, request: Any = None
    ) -> None:
        """A message that retrying cannot fix: dead letter, then an error reply if one was asked."""
        await self.dead_letters.send(msg, code, message, trace_id)
        await self._reply(
            msg, ErrorReply(error=ErrorInfo(code=code, message=message)), request, trace_id
        )

    # -- observing ------------------------------------------------------------------------------

    async def _peer_status(self, agent: str, online: bool) -> None:
        was = self.peers.get(agent)
        self.peers[agent] = online
        if agent in self.app.depends_on:
            self.metrics.peer_up.labels(agent).set(1 if online else 0)
        if was != online and agent != self.name:
            log.info("agent %s is %s", agent, "online" if online else "offline")
            if self.app.on_peer_status is not None:
                await self.app.on_peer_status(agent, online)

    async def health(self) -> HealthReport:
        checks = {
            "broker": Check(
                ok=self.transport.connected,
                detail=f"{'connected to' if self.transport.connected else 'no connection to'} "
                f"{self.settings.broker.host}:{self.settings.broker.port}",
            )
        }
        try:
            async with asyncio.timeout(2):
                await self.store.ping()
            checks["database"] = Check(ok=True, detail=f"{self.store.dialect} answers")
        except Exception as exc:
            checks["database"] = Check(ok=False, detail=f"{self.store.dialect}: {exc}")
        for dep in self.app.depends_on:
            state = self.peers.get(dep)
            checks[dep] = Check(
                ok=state is True,
                detail={True: "online", False: "offline", None: "no status seen"}[state],
            )
        outbox_n, outbox_age, receipts_n, receipts_age = 0, 0.0, 0, 0.0
        if checks["database"].ok:
            outbox_n, outbox_age = await self.relay.pending()
            receipts_n, receipts_age = await self.receipts.pending()
        return HealthReport.of(
            self.name,
            checks,
            outbox_pending=outbox_n,
            outbox_oldest_age_seconds=outbox_age,
            receipts_pending=receipts_n,
            receipts_oldest_age_seconds=receipts_age,
        )

    async def _health_loop(self, interval: float = 15.0) -> None:
        """Publish the health report (retained) so `lifeops-mesh health` can read it."""
        while True:
            try:
                if self.transport.connected:
                    await self.publish("health", await self.health())
            except Exception as exc:
                log.warning("could not publish health: %s", exc)
            await asyncio.sleep(interval)

    async def _health_page(self) -> tuple[int, str, bytes]:
        report = await self.health()
        status = 200 if report.status == "healthy" else 503
        return status, "application/json", codec.encode(report) + b"\n"

    async def _metrics_page(self) -> tuple[int, str, bytes]:
        try:
            n, age = await self.relay.pending()
            self.metrics.outbox_depth.set(n)
            self.metrics.outbox_oldest_age.set(age)
            n, age = await self.receipts.pending()
            self.metrics.receipts_pending.set(n)
            self.metrics.receipts_oldest_age.set(age)
            if self.app.collect is not None:
                await self.app.collect(self)
        except Exception as exc:
            log.warning("metrics refresh failed: %s", exc)
        self.metrics.connected.set(1 if self.transport.connected else 0)
        return 200, CONTENT_TYPE_LATEST, generate_latest(self.metrics.registry)

    # -- receiving -----------------------------------------------------------------------------

    async def _on_message(self, msg: Inbound) -> int:
        if msg.topic == self.requester.reply_topic:
            if not self.requester.deliver(msg):
                log.info("late or unknown reply on %s dropped", msg.topic)
            return 0
        if msg.topic == DROPPED:
            with contextlib.suppress(ValueError):
                self.metrics.broker_dropped.set(int(msg.payload))
            return 0
        if "status" not in self._routes and msg.topic.endswith("/status"):
            found = self.contract.match(msg.topic)
            if found is not None and found[0].key == "status":
                await self._peer_status(found[1]["agent"], msg.payload == b"online")
                return 0
            if found is None or found[0].key not in self._routes:
                return 0  # e.g. homeassistant/status: caught by the +/status filter, not ours
        trace_id = msg.user_properties.get(TRACE_PROPERTY) or uuid.uuid4().hex
        token = trace_id_var.set(trace_id)
        agent_token = agent_var.set(self.name)
        try:
            return await self._dispatch(msg, trace_id)
        finally:
            agent_var.reset(agent_token)
            trace_id_var.reset(token)

    async def _dispatch(self, msg: Inbound, trace_id: str) -> int:
        found = self.contract.match(msg.topic)
        if found is None:
            await self._fail(
                msg,
                "undeclared_topic",
                f"{self.name} has no route for topic {msg.topic!r}",
                trace_id,
            )
            return 0
        route = self._routes.get(found[0].key)
        if route is None:
            # A declared topic this agent does not handle, caught by a wider filter of its own
            # (stats/character/+ also matches the request topic stats/character/get): not ours
            # to answer or dead-letter; its own subscribers handle it.
            log.debug("%s: %s is %s, not routed here", self.name, msg.topic, found[0].key)
            return 0
        entry, params = found
        self.metrics.received.labels(entry.key).inc()
        try:
            payload = codec.decode(msg.payload, entry.schema_type, entry.format)
        except DecodeError as exc:
            await self._fail(msg, exc.code, f"{entry.topic}: {exc.message}", trace_id)
            return 0
        delivery = Delivery(
            msg=msg, entry=entry, params=params, route=route, payload=payload, trace_id=trace_id
        )
        outcome = await self.committer.process(delivery)
        log.info(
            "%s %s -> %s",
            entry.key,
            msg.topic,
            "error " + outcome.error.code
            if outcome.error
            else ("duplicate" if outcome.duplicate else "ok"),
        )
        if outcome.error is not None:
            await self._fail(msg, outcome.error.code, outcome.error.message, trace_id, payload)
        elif outcome.reply is not None:
            reply = outcome.reply
            if route.after_commit is not None:
                try:
                    reply = await route.after_commit(payload, reply)
                except Exception:
                    log.exception("after-commit hook of %s failed; replying without it", entry.key)
            await self._reply(msg, reply, payload, trace_id)
        return 0


def covers(wide: str, narrow: str) -> bool:
    """Whether every topic matching filter `narrow` also matches filter `wide`."""
    if wide.startswith("$share/") or narrow.startswith("$share/"):
        return False
    w, n = wide.split("/"), narrow.split("/")
    for i, level in enumerate(w):
        if level == "#":
            return True
        if i >= len(n) or (level != "+" and level != n[i]) or (level != "+" and n[i] in "+#"):
            return False
        if level == "+" and n[i] == "#":
            return False
    return len(w) == len(n)
