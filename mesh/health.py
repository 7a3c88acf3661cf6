"""An agent's health: the report behind GET /healthz and the retained `<agent>/health`, and the
Prometheus page behind GET /metrics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mesh import codec
from mesh.schemas import Check, HealthReport

if TYPE_CHECKING:
    from mesh.agent import Agent

log = logging.getLogger("mesh.health")

Page = Callable[[], Awaitable[tuple[int, str, bytes]]]


async def report(agent: Agent) -> HealthReport:
    """Broker, subscriptions, database, the agents depended on, and what waits to go out."""
    t = agent.transport
    broker = agent.settings.broker
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
    trouble = agent.committer.trouble
    if trouble is not None:  # it may answer reads, but commits do not go through
        checks["database"] = Check(
            ok=False, detail=f"{agent.store.dialect} cannot commit: {trouble}"
        )
    for dep in agent.app.depends_on:
        state = agent.peers.get(dep)
        checks[dep] = Check(
            ok=state is True,
            detail={True: "online", False: "offline", None: "no status seen"}[state],
        )
    checks.update(agent.supervisor.checks())  # background tasks that ended or keep failing
    if agent.app.checks is not None:
        checks.update(agent.app.checks())
    outbox_n, outbox_age, receipts_n, receipts_age = 0, 0.0, 0, 0.0
    if checks["database"].ok:
        outbox_n, outbox_age = await agent.relay.pending()
        receipts_n, receipts_age = await agent.receipts.pending()
    return HealthReport.of(
        agent.name,
        checks,
        instance=agent.settings.instance,
        outbox_pending=outbox_n,
        outbox_oldest_age_seconds=outbox_age,
        receipts_pending=receipts_n,
        receipts_oldest_age_seconds=receipts_age,
        broker_dropped=agent.dispatcher.broker_dropped,
    )


async def publish_loop(agent: Agent, interval: float = 15.0) -> None:
    """Publish the health report (retained) so `lifeops-mesh health` can read it."""
    while True:
        try:
            if agent.transport.connected:
                rep = await report(agent)
                await agent.publish("health", rep)
                if "instance_health" in agent.contract.topics:
                    await agent.publish("instance_health", rep, instance=agent.settings.instance)
            agent.supervisor.ok("health")
        except Exception as exc:
            agent.supervisor.failed("health", exc)
        await asyncio.sleep(interval)


def pages(agent: Agent) -> dict[str, Page]:
    """The HTTP routes of an agent: /healthz and /metrics."""

    async def healthz() -> tuple[int, str, bytes]:
        rep = await report(agent)
        status = 200 if rep.status == "healthy" else 503
        return status, "application/json", codec.encode(rep) + b"\n"

    async def metrics() -> tuple[int, str, bytes]:
        m = agent.metrics
        try:
            n, age = await agent.relay.pending()
            m.outbox_depth.set(n)
            m.outbox_oldest_age.set(age)
            n, age = await agent.receipts.pending()
            m.receipts_pending.set(n)
            m.receipts_oldest_age.set(age)
            if agent.app.collect is not None:
                await agent.app.collect(agent)
        except Exception as exc:
            log.warning("metrics refresh failed: %s", exc)
        m.connected.set(1 if agent.transport.connected else 0)
        return 200, CONTENT_TYPE_LATEST, generate_latest(m.registry)

    return {"/metrics": metrics, "/healthz": healthz}
