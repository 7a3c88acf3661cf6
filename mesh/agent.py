"""Agent lifecycle: store, broker session, availability, publishing.

An agent package provides an `AgentApp` (its name, contract, route table and migrations);
`Agent` runs it over the `Transport` and `Store` it is given (`mqtt_agent()` builds both from
the settings). The constructor does nothing; `start()` opens the store, migrates, connects
(durable session, Last Will), publishes `online`, subscribes, and starts the group committer,
the outbox relay, the state publisher and the receipts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec

from mesh import codec, dlq, health, inbox, outbox, receipts, state
from mesh.broker.acl import DROPPED
from mesh.contract import Contract
from mesh.dispatch import Dispatcher
from mesh.errors import ContractError, TransportError
from mesh.handler import Route
from mesh.http import HttpEndpoint
from mesh.inbox import GroupCommitter
from mesh.logs import agent_var
from mesh.metrics import Metrics
from mesh.outbox import OutboxRecord, OutboxRelay
from mesh.rpc import TRACE_PROPERTY, Requester
from mesh.schemas import HealthReport
from mesh.settings import Settings
from mesh.store import Migration, Store, open_store
from mesh.topics import covers, shared
from mesh.transport import MqttTransport, Transport, Will
from mesh.transport.mqtt import tls_context

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
    contract: Contract
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


AgentBuilder = Callable[[Settings], AgentApp]
"""What an agent package exposes as its `lifeops_mesh.agents` entry point."""


def availability_will(contract: Contract, agent: str) -> Will:
    """The Last Will of an agent: a retained `offline` on its availability topic."""
    return Will(topic=contract.topic("status", agent=agent), payload=b"offline", retain=True)


def mqtt_transport(settings: Settings, *, will: Will | None = None) -> MqttTransport:
    """The durable MQTT v5 session of an agent, as its settings describe it."""
    b = settings.broker
    return MqttTransport(
        client_id=settings.client_id,
        host=b.host,
        port=b.port,
        username=b.username,
        password=b.password,
        tls=tls_context(b.ca_file) if b.tls else None,
        session_expiry_s=settings.session_expiry_s,
        will=will,
    )


def mqtt_agent(settings: Settings, app: AgentApp, *, metrics: Metrics | None = None) -> Agent:
    """An agent on the broker and the database its settings name."""
    return Agent(
        settings,
        app,
        transport=mqtt_transport(settings, will=availability_will(app.contract, app.name)),
        store=open_store(settings.db_url),
        metrics=metrics,
    )


class Agent:
    def __init__(
        self,
        settings: Settings,
        app: AgentApp,
        *,
        transport: Transport,
        store: Store,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.app = app
        self.name = app.name
        self.contract = app.contract
        self.metrics = metrics or Metrics()
        self.principal = settings.broker.username or self.name
        self.store = store
        self.transport = transport
        self._routes = {r.key: r for r in app.routes}
        self._check_routes()
        self._assemble()
        self._started = False
        self.peers: dict[str, bool] = {}
        self._tasks: set[asyncio.Future[Any]] = set()
        self.http: HttpEndpoint | None = None

    def _assemble(self) -> None:
        """The parts: outbox relay, state publisher, requester, receipts, group committer,
        dead letters, and the dispatcher that feeds them."""
        settings, app = self.settings, self.app
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
        self.dispatcher = Dispatcher(
            name=self.name,
            contract=self.contract,
            routes=self._routes,
            transport=self.transport,
            requester=self.requester,
            committer=self.committer,
            dead_letters=self.dead_letters,
            metrics=self.metrics,
            on_peer_status=self._peer_status,
        )

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
            if entry.kind in ("event", "request"):
                f = shared(self.settings.share_group, f)
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
            self.transport.on_message = self.dispatcher.on_message
            self.transport.on_connect = self._on_connect
            await self.committer.start()
            await self.transport.subscribe(self.subscriptions())
            await self.transport.connect(timeout=timeout)
            await self.relay.start()
            await self.states.start()
            await self.receipts.start()
            self._spawn(health.publish_loop(self))
            if self.settings.metrics_port is not None:
                self.http = HttpEndpoint(
                    health.pages(self), self.settings.metrics_bind, self.settings.metrics_port
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
        for task in list(self._tasks):
            task.cancel()
        if self.http is not None:
            await self.http.stop()
        await self.transport.disconnect()
        await self.store.close()
        self.metrics.connected.set(0)
        lifecycle.info("%s stopped", self.name)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
            self._spawn(self.relay.sweep())
            self.receipts.reconnected()
            if not session_present:  # the broker may have lost retained messages too
                self._spawn(self.states.republish_all())

    # -- publishing ----------------------------------------------------------------------------

    async def publish(
        self, key: str, payload: Any, *, trace_id: str | None = None, **params: str
    ) -> None:
        """Publish by contract key right away (not through the outbox)."""
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
        return await health.report(self)
