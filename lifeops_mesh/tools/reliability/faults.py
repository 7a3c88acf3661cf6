"""The faults a reliability run injects while traffic flows, and how recovery is measured."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable

import msgspec

from lifeops_mesh.tools.reliability.driver import Driver
from lifeops_mesh.tools.reliability.report import Fault
from lifeops_mesh.tools.reliability.rig import Rig
from mesh.testing.processes import AgentProcess

Action = Callable[[], Awaitable[None]]


class Planned(msgspec.Struct, frozen=True):
    name: str
    action: Action
    needs: str  # the request kind that needs the broken part: "log" (Stats) or "complete"


async def kill_restart(proc: AgentProcess) -> None:
    proc.signal(signal.SIGKILL)
    await asyncio.to_thread(proc.wait, 10)
    await asyncio.sleep(0.5)
    await asyncio.to_thread(proc.start)


def plan(rig: Rig, *, kills: int, outage_s: float) -> list[Planned]:
    """kill -9 of each agent `kills` times, a clean broker restart, a broker SIGKILL with an
    outage, and (PostgreSQL) a database outage."""
    broker = rig.broker

    async def broker_restart() -> None:
        await asyncio.to_thread(broker.stop)
        await asyncio.to_thread(broker.start)

    async def broker_outage() -> None:
        await asyncio.to_thread(broker.kill)
        await asyncio.sleep(outage_s)
        await asyncio.to_thread(broker.start)

    out: list[Planned] = []
    for n in range(kills):
        out.append(Planned(f"kill -9 stats #{n + 1}", lambda: kill_restart(rig.stats), "log"))
        out.append(
            Planned(f"kill -9 lifeops #{n + 1}", lambda: kill_restart(rig.lifeops), "complete")
        )
    out.append(Planned("mosquitto restart", broker_restart, "complete"))
    out.append(Planned(f"mosquitto SIGKILL + {outage_s:g}s outage", broker_outage, "complete"))
    if rig.pg is not None:
        pg = rig.pg
        down = min(outage_s, 10)

        async def db_outage() -> None:
            await asyncio.to_thread(pg.stop)
            await asyncio.sleep(down)
            await asyncio.to_thread(pg.start)

        out.append(Planned(f"postgresql outage {down:g}s", db_outage, "complete"))
    return out


async def inject(planned: Planned, driver: Driver, started: float) -> Fault:
    """Run one fault; its recovery is the time from its end to the next answered request of
    the kind that needs the broken part (bounded: 30 s)."""
    fault = Fault(name=planned.name, at_s=time.monotonic() - started)
    await planned.action()
    end = time.monotonic()
    for _ in range(300):
        if driver.last_ok[planned.needs] > end:
            fault.recovery_s = driver.last_ok[planned.needs] - end
            break
        await asyncio.sleep(0.1)
    return fault
