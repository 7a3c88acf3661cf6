"""An agent's health: the report behind GET /healthz and the retained `<agent>/health`, and the
Prometheus page behind GET /metrics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mesh import codec
from mesh.metrics import Metrics
from mesh.schemas import Check, HealthReport
from mesh.settings import BrokerURL
from mesh.store import Store
from mesh.supervise import Supervisor
from mesh.transport import Transport

log = logging.getLogger("mesh.health")

Page = Callable[[], Awaitable[tuple[int, str, bytes]]]


class Pending(Protocol):
    """A queue waiting to go out: the outbox relay, the receipts."""

    async def pending(self) -> tuple[int, float]: ...


class PublishByKey(Protocol):
    """`Agent.publish`: by contract key, right away."""

    def __call__(
        self, key: str, payload: Any, *, trace_id: str | None = None, **params: str
    ) -> Awaitable[None]: ...


class Vitals(msgspec.Struct, frozen=True, kw_only=True):
    """What health reads of an agent, all of it, given to it by the agent (health knows no
    Agent): its parts, and views of what it tracks (`peers`, `refusals` are the live dicts)."""

    name: str
    instance: str
    broker: BrokerURL
    transport: Transport
    store: Store
    metrics: Metrics
    supervisor: Supervisor
    outbox: Pending
    receipts: Pending
    depends_on: tuple[str, ...]
    peers: Mapping[str, bool]  # agent -> online, as far as seen
    refusals: Mapping[str, str]  # topic -> why the broker will never take it
    commit_trouble: Callable[[], str | None]  # why commits do not go through, if they do not
    broker_dropped: Callable[[], int | None]  # $SYS/broker/publish/messages/dropped
    app_checks: Callable[[], dict[str, Check]] | None
    collect: Callable[[], Awaitable[None]] | None  # the app's gauges, before a scrape
    publish: PublishByKey
    instance_health: bool  # the contract has `<agent>/health/<instance>`


async def report(agent: Vitals) -> HealthReport:
    """Broker, subscriptions, database, the agents depended on, and what waits to go out."""
    t = agent.transport
    broker = agent.broker
    checks = {
        "broker": Check(
            ok=t.connected,
            detail=f"{'connected to' if t.connected else 'no connection to'} "
            f"{broker.host}:{broker.port}",
        )
    }
    refused = t.refused_filters
    if refused:
        checks["subscriptions"] = Check(
            ok=False, detail=f"the broker refused {', '.join(refused)} (check the ACL)"
        )
    if agent.refusals:
        listed = ", ".join(f"{topic} ({why})" for topic, why in list(agent.refusals.items())[-5:])
        checks["publishing"] = Check(
            ok=False, detail=f"the broker will not take {listed} (see mesh/dlq/{agent.name})"
        )
    try:
        async with asyncio.timeout(2):
            await agent.store.ping()
        checks["database"] = Check(ok=True, detail=f"{agent.store.dialect} answers")
    except Exception as exc:
        checks["database"] = Check(ok=False, detail=f"{agent.store.dialect}: {exc}")
    trouble = agent.commit_trouble()
    if trouble is not None:  # it may answer reads, but commits do not go through
        checks["database"] = Check(
            ok=False, detail=f"{agent.store.dialect} cannot commit: {trouble}"
        )
    for dep in agent.depends_on:
        state = agent.peers.get(dep)
        checks[dep] = Check(
            ok=state is True,
            detail={True: "online", False: "offline", None: "no status seen"}[state],
        )
    checks.update(agent.supervisor.checks())  # background tasks that ended or keep failing
    if agent.app_checks is not None:
        checks.update(agent.app_checks())
    outbox_n, outbox_age, receipts_n, receipts_age = 0, 0.0, 0, 0.0
    if checks["database"].ok:
        outbox_n, outbox_age = await agent.outbox.pending()
        receipts_n, receipts_age = await agent.receipts.pending()
    return HealthReport.of(
        agent.name,
        checks,
        instance=agent.instance,
        outbox_pending=outbox_n,
        outbox_oldest_age_seconds=outbox_age,
        receipts_pending=receipts_n,
        receipts_oldest_age_seconds=receipts_age,
        broker_dropped=agent.broker_dropped(),
    )


async def publish_loop(agent: Vitals, interval: float = 15.0) -> None:
    """Publish the health report (retained) so `lifeops-mesh health` can read it."""
    while True:
        try:
            if agent.transport.connected:
                rep = await report(agent)
                await agent.publish("health", rep)
                if agent.instance_health:
                    await agent.publish("instance_health", rep, instance=agent.instance)
            agent.supervisor.ok("health")
        except Exception as exc:
            agent.supervisor.failed("health", exc)
        await asyncio.sleep(interval)


def pages(agent: Vitals) -> dict[str, Page]:
    """The HTTP routes of an agent: /healthz and /metrics."""

    async def healthz() -> tuple[int, str, bytes]:
        rep = await report(agent)
        status = 200 if rep.status == "healthy" else 503
        return status, "application/json", codec.encode(rep) + b"\n"

    async def metrics() -> tuple[int, str, bytes]:
        m = agent.metrics
        try:
            n, age = await agent.outbox.pending()
            m.outbox_depth.set(n)
            m.outbox_oldest_age.set(age)
            n, age = await agent.receipts.pending()
            m.receipts_pending.set(n)
            m.receipts_oldest_age.set(age)
            if agent.collect is not None:
                await agent.collect()
        except Exception as exc:
            log.warning("metrics refresh failed: %s", exc)
        m.connected.set(1 if agent.transport.connected else 0)
        return 200, CONTENT_TYPE_LATEST, generate_latest(m.registry)

    return {"/metrics": metrics, "/healthz": healthz}
