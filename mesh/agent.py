"""Agent lifecycle: the runtime's parts, wired, started and stopped.

An agent package provides an `AgentApp` (its name, contract, route table and migrations);
`Agent` runs it over the `Transport` and `Store` it is given (`mqtt_agent()` builds both from
the settings). The constructor only wires the parts (publishing in `mesh.publishing`, who is
online in `mesh.presence`, health in `mesh.health`, receiving in `mesh.dispatch`); `start()`
opens the store, migrates, connects (durable session, Last Will), publishes `online`,
subscribes, and starts the group committer, the outbox relay, the state publisher and the
receipts.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec

from mesh import dlq, health, inbox, keys, outbox, overload, receipts, retention, state
from mesh.client import broker_transport
from mesh.contract import Contract
from mesh.dispatch import Dispatcher
from mesh.errors import ContractError, TransportError
from mesh.handler import Route
from mesh.http import HttpEndpoint
from mesh.inbox import GroupCommitter
from mesh.logs import agent_var
from mesh.metrics import Metrics
from mesh.outbox import OutboxRelay
from mesh.presence import Presence, Roster
from mesh.publishing import Publisher
from mesh.readback import read_retained
from mesh.rpc import Requester, reply_topic_for
from mesh.schemas import Check, HealthReport
from mesh.settings import Settings
from mesh.store import Migration, Store, open_store
from mesh.supervise import Supervisor
from mesh.transport import MqttTransport, Transport, Will

log = logging.getLogger("mesh.agent")
lifecycle = logging.getLogger("mesh.lifecycle")  # start/stop lines, logged at any level

RUNTIME_MIGRATIONS: dict[str, Sequence[Migration]] = {
    "mesh_inbox": inbox.MIGRATIONS,
    "mesh_outbox": outbox.MIGRATIONS,
    "mesh_dlq": dlq.MIGRATIONS,
    "mesh_receipts": receipts.MIGRATIONS,
    "mesh_state": state.MIGRATIONS,
    "mesh_keys": keys.MIGRATIONS,
}


# The runtime's background tasks, by the names health and mesh_task_failures_total{task} use.
RUNTIME_TASKS = (
    "outbox-relay", "outbox-sweep", "outbox-resweep", "state-publisher", "converge",
    "receipts-sweep", "receipts-store", "receipts-send", "health", "prune",
)  # fmt: skip


class AgentApp(msgspec.Struct, kw_only=True):
    """What an agent package provides to the runtime."""

    name: str
    contract: Contract
    routes: list[Route]
    migrations: Sequence[Migration] = ()
    # Schema components of the app's besides its own (name -> migrations), e.g. a registry
    # shared by several agents: migrated at start, and copied by `store copy` with the rest.
    components: dict[str, Sequence[Migration]] = {}
    # After the store is open and migrated, before the broker connects: load what handlers need.
    on_open: Callable[[Agent], Awaitable[None]] | None = None
    # After everything runs (connected, subscribed), before the instance says `online`.
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
    # The app's own health checks (name -> Check), merged into the agent's health report.
    checks: Callable[[], dict[str, Check]] | None = None


AgentBuilder = Callable[[Settings], AgentApp]
"""What an agent package exposes as its `lifeops_mesh.agents` entry point."""


def availability_will(contract: Contract, agent: str) -> Will:
    """The Last Will of an agent: a retained `offline` on its availability topic."""
    return Will(topic=contract.topic("status", agent=agent), payload=b"offline", retain=True)


def mqtt_transport(settings: Settings, *, will: Will | None = None) -> MqttTransport:
    """The durable MQTT v5 session of an agent, as its settings describe it."""
    return broker_transport(
        settings.broker,
        client_id=settings.client_id,
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
    """Runs one `AgentApp` over the `Transport` and `Store` it is given: `start()`, `stop()`."""

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
        # Who the contract says publishes: the agent, whatever broker account it connects
        # with (an installation may give every agent one shared account, as Home Assistant's
        # Mosquitto app does); the account names only its reply topics (the ACL's rule).
        self.principal = self.name
        self.account = settings.broker.username or self.name
        self.store = store
        self.transport = transport
        self.presence = (
            Presence(self.contract, self.name, settings.instance, settings.client_id, transport)
            if "instance_status" in self.contract.topics
            else None
        )
        self._routes = {r.key: r for r in app.routes}  # the route table, built once
        self._check_routes()
        self._tasks: set[asyncio.Future[Any]] = set()
        # Every background task of the runtime, and the app's own (`agent.supervisor.start`).
        self.supervisor = Supervisor(self.metrics)
        self.roster = Roster(
            contract=self.contract,
            agent=self.name,
            instance=settings.instance,
            transport=transport,
            metrics=self.metrics,
            depends_on=app.depends_on,
            on_peer_status=app.on_peer_status,
            spawn=self._spawn,
        )
        self._assemble()
        self.drops = overload.Drops(self.name, self.metrics)  # messages dropped unhandled
        self.dispatcher.on_dropped = self.drops
        self._zero_metrics()
        # Set when the agent cannot go on (its session was taken over): `failure` says why.
        self.halted = asyncio.Event()
        self.failure: str | None = None
        self.http: HttpEndpoint | None = None

    def _assemble_sending(self) -> None:
        """The sending parts: publisher (and its dead letters), outbox relay, state publisher,
        requester, receipts."""
        settings, app = self.settings, self.app
        self.publisher = Publisher(
            name=self.name,
            contract=self.contract,
            transport=self.transport,
            metrics=self.metrics,
            store=self.store,
            dlq_cap=settings.dlq_cap,
            dlq_max_bytes=settings.retention.max_dead_letter_bytes,
        )
        self.dead_letters = self.publisher.dead_letters
        out = self.publisher
        self.relay = OutboxRelay(self.store, out.record, on_refused=out.record_refused)
        self.states = state.StatePublisher(self.store, out.state, on_refused=out.state_refused)
        self.requester = Requester(
            principal=self.principal,
            client_id=settings.client_id,
            transport=self.transport,
            contract=self.contract,
            metrics=self.metrics,
            reply_topic=reply_topic_for(self.account, settings.client_id),
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
        self.receipts.on_dead = out.receipt_dead

    def _assemble(self) -> None:
        """The parts: the sending ones, the group committer, and the dispatcher that feeds
        them."""
        settings = self.settings
        self._assemble_sending()
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
            keyless_window_s=settings.keyless_window_s,
        )
        self.dispatcher = Dispatcher(
            name=self.name,
            contract=self.contract,
            routes=self._routes,
            transport=self.transport,
            requester=self.requester,
            committer=self.committer,
            dead_letters=self.dead_letters,
            metrics=self.metrics,
            on_agent_status=self.roster.agent_status,
            on_instance_status=self.roster.instance_status,
            on_refused=self.publisher.refused,
        )

    def _zero_metrics(self) -> None:
        """Counters whose label values are known exist at 0 from the start (see Metrics)."""
        mine = [k for k, e in self.contract.topics.items() if self.name in e.publishers]
        self.metrics.start_at_zero(
            received=self._routes,
            published=[*mine, "reply", "dlq"],
            requests=[k for k in mine if self.contract.entry(k).reply_schema is not None],
            dead_letter_codes=dlq.RUNTIME_CODES,
            tables=retention.TABLES,
        )
        for task in RUNTIME_TASKS:
            self.supervisor.register(task)

    @property
    def status_topic(self) -> str:
        return self.roster.status_topic

    @property
    def peers(self) -> dict[str, bool]:
        """Agent -> online, as this agent has seen their availability."""
        return self.roster.peers

    @property
    def instances(self) -> dict[str, dict[str, bool]]:
        """Agent -> instance -> online."""
        return self.roster.instances

    @property
    def vitals(self) -> health.Vitals:
        """What health reads of this agent (its `publish` as it is now)."""
        app = self.app
        return health.Vitals(
            name=self.name,
            instance=self.settings.instance,
            broker=self.settings.broker,
            transport=self.transport,
            store=self.store,
            metrics=self.metrics,
            supervisor=self.supervisor,
            outbox=self.relay,
            receipts=self.receipts,
            depends_on=app.depends_on,
            peers=self.roster.peers,
            refusals=self.publisher.refusals,
            commit_trouble=lambda: self.committer.trouble,
            broker_dropped=lambda: self.dispatcher.broker_dropped,
            app_checks=app.checks,
            collect=None if app.collect is None else functools.partial(app.collect, self),
            publish=self.publish,
            instance_health="instance_health" in self.contract.topics,
        )

    def _check_routes(self) -> None:
        for key in self._routes:
            entry = self.contract.entry(key)
            if self.name not in entry.subscribers:
                raise ContractError(f"{self.name} routes {key!r} but is not one of its subscribers")

    def shared_filters(self) -> list[str]:
        """The `$share/<group>/...` filters this instance consumes through."""
        return [f for f in self.subscriptions() if f.startswith("$share/")]

    def subscriptions(self) -> list[str]:
        """What this instance subscribes to: what its dispatcher handles."""
        return self.dispatcher.filters(self.settings.share_group)

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self, timeout: float = 30.0) -> None:
        """Start, or fail having closed whatever was opened (no store thread or connection is
        left behind to keep the process alive)."""
        token = agent_var.set(self.name)  # tasks created while starting log as this agent
        try:
            await self._start(timeout)
        except BaseException:
            await self._close_all()
            raise
        finally:
            agent_var.reset(token)

    async def _close_all(self) -> None:
        with contextlib.suppress(Exception):
            await self.committer.stop()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await self.supervisor.stop(1)
        for closing in (
            self.relay.stop(timeout=1),
            self.states.stop(),
            self.receipts.stop(),
            self.http.stop() if self.http is not None else asyncio.sleep(0),
            self.presence.connection.disconnect() if self.presence else asyncio.sleep(0),
            self.transport.disconnect(),
            self.store.close(),
        ):
            with contextlib.suppress(Exception):
                await closing

    async def _start(self, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            await self.store.open()
            for component, migrations in RUNTIME_MIGRATIONS.items():
                await self.store.migrate(component, migrations)
            if self.app.migrations:
                await self.store.migrate(self.name, self.app.migrations)
            for component, steps in self.app.components.items():
                await self.store.migrate(component, steps)
            if self.app.on_open is not None:
                await self.app.on_open(self)
            if self.presence is not None:
                if self.settings.single_instance:
                    await self.presence.ensure_alone()
                await self.presence.connect(timeout)
            self.dispatcher.closing = False
            self.transport.on_message = self.dispatcher.on_message
            self.transport.on_dropped = self.drops
            self.transport.on_connect = self._on_connect
            self.transport.on_taken_over = self._taken_over
            self.transport.on_lost = self._connection_lost
            await self.committer.start()
            await self.transport.subscribe(self.subscriptions())
            await self.transport.connect(timeout=timeout)
            await self.relay.start(self.supervisor)
            await self.states.start(self.supervisor)
            try:
                await self.converge_states()
            except Exception as exc:  # retried in the background until it goes through
                self.supervisor.failed("converge", exc)
                self.supervisor.job("converge", self._converge)
            await self.receipts.start(self.supervisor)
            vitals = self.vitals
            self.supervisor.start("health", lambda: health.publish_loop(vitals))
            self.supervisor.start("prune", self._prune_loop)
            if self.settings.metrics_port is not None:
                self.http = HttpEndpoint(
                    health.pages(vitals), self.settings.metrics_bind, self.settings.metrics_port
                )
                await self.http.start()
            if self.app.on_start is not None:
                await self.app.on_start(self)
            if self.presence is not None:
                await self.presence.announce()
        self.roster.serving = True
        lifecycle.info(
            "%s started (broker %s, db %s)", self.name, self.settings.broker, self.store.dialect
        )

    async def stop(self, timeout: float = 10.0) -> None:
        """A clean stop. A member of a shared subscription first leaves the group (the broker
        routes the group's messages to the others from then on), finishes what it is handling
        (acknowledged after commit), and ends its session (DISCONNECT with session expiry 0):
        nothing stays queued for it. A lone instance finishes what it handles and keeps its
        durable session, so what arrives meanwhile waits for its restart."""
        self.roster.serving = False  # its own `offline` below must not be restated as `online`
        self.dispatcher.closing = True  # QoS 0 arriving from now on: dropped, not handled
        for task in list(self._tasks):  # health, sweeps: nothing new starts
            task.cancel()
        await self.supervisor.stop(2, "health", "prune", "converge")
        shared = self.settings.share_group is not None
        try:
            async with asyncio.timeout(timeout):
                if self.app.on_stop is not None:
                    await self.app.on_stop(self)
                if shared and self.transport.connected:
                    with contextlib.suppress(TransportError):
                        await self.transport.unsubscribe(self.shared_filters())
                if not await self.dispatcher.drained(timeout / 2):
                    log.warning("%d messages still in hand at stop", self.dispatcher.inflight)
                await self.dead_letters.flush()
                await self.receipts.stop()
                await self.states.stop()
                await self.relay.stop(timeout=timeout / 2)
                if self.presence is not None:
                    await self.presence.close()
                if self.transport.connected and not self.roster.others_online():
                    await self.roster.say(b"offline", timeout=2)
        except TimeoutError:
            log.warning("%s: clean stop timed out", self.name)
        await self.committer.stop()
        for task in list(self._tasks):
            task.cancel()
        await self.supervisor.stop(5)
        if self.http is not None:
            await self.http.stop()
        await self.transport.disconnect(end_session=shared)
        await self.store.close()
        self.metrics.connected.set(0)
        lifecycle.info("%s stopped", self.name)

    async def _prune_loop(self, first_s: float = 30.0, every_s: float = 600.0) -> None:
        """Bounded growth: prune the runtime's tables by age and count now and then."""
        await asyncio.sleep(first_s)
        while True:
            try:
                await retention.prune(self.store, self.settings.retention, self.metrics)
                self.supervisor.ok("prune")
            except Exception as exc:
                self.supervisor.failed("prune", exc)
            await asyncio.sleep(every_s)

    def _connection_lost(self) -> None:
        self._spawn(self._check_kicked())

    async def _check_kicked(self) -> None:
        """Two processes throwing each other off with one client id: stop being one of them
        (see Presence.thrown_off)."""
        thrown_off = self.presence is not None and await self.presence.thrown_off()
        if thrown_off and not self.halted.is_set():
            self._taken_over()
            await self.transport.disconnect()

    def state_keys(self) -> list[str]:
        """The retained state entries this agent publishes (health aside: it is restated
        every 15 s anyway)."""
        return [
            k
            for k, e in self.contract.topics.items()
            if e.kind == "state" and e.retain and self.name in e.publishers
            and "{agent}" not in e.topic
        ]  # fmt: skip

    async def converge_states(self) -> int:
        """Read back the broker's retained copies of this agent's states and publish again
        every one that is missing or stale; returns how many (0 when the contract has no
        `sync` marker to read back with)."""
        keys = self.state_keys()
        if not keys or "sync" not in self.contract.topics:
            return 0
        filters = [self.contract.subscription(k) for k in keys]
        nonce = uuid.uuid4().hex
        marker = self.contract.topic("sync", agent=self.name, nonce=nonce)
        connection = self.transport.sibling(f"{self.settings.client_id}-sync-{nonce[:6]}")
        retained = await read_retained(connection, marker, filters, timeout=30)
        return await self.states.converge(keys, {m.topic: m.payload for m in retained})

    async def _resweep(self) -> None:
        """After a reconnect: what the outbox has not sent goes out now (retried until read)."""
        await self.relay.sweep()

    async def _converge(self) -> None:
        """converge_states until it goes through once (a supervised job: a failed read-back
        or database error is counted and retried with backoff, and health says so)."""
        await self.converge_states()

    def _taken_over(self) -> None:
        self.failure = (
            f"another process connected with client id {self.settings.client_id} and took this "
            f"{self.name} instance's session over: this one stops (one client id, one process)"
        )
        lifecycle.error("%s", self.failure)
        self.metrics.connected.set(0)
        self.halted.set()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_connect(self, session_present: bool) -> None:
        self.metrics.connected.set(1)
        if self.transport.reconnects:
            self.metrics.reconnects.inc()
        await self.roster.say(b"online")
        if self.roster.serving:
            self.supervisor.job("outbox-resweep", self._resweep)
            self.receipts.reconnected()
            # Whatever the broker restored (an old snapshot still says `session present`),
            # its retained states converge on what is committed (retried until they do).
            self.supervisor.job("converge", self._converge)

    # -- publishing ------------------------------------------------------------------------------

    async def publish(
        self, key: str, payload: Any, *, trace_id: str | None = None, **params: str
    ) -> None:
        """Publish by contract key right away (not through the outbox)."""
        await self.publisher.publish(key, payload, trace_id=trace_id, **params)

    async def health(self) -> HealthReport:
        return await health.report(self.vitals)
