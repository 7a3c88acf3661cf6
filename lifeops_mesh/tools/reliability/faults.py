"""The faults a reliability run injects while traffic flows, and how recovery is measured.

Every kind, on both backends unless said:
- kill -9 of Stats, of LifeOps;
- Stats, LifeOps exiting right after a commit, before its acknowledgements, replies and relay
  (LIFEOPS_FAILPOINT=exit_after_commit:N), then started again;
- a clean Mosquitto restart; a Mosquitto SIGKILL right after a snapshot was written (the
  restored snapshot misses what came after it); a Mosquitto SIGKILL with an outage;
- SIGSTOP of Stats for longer than a request's timeout, then SIGCONT;
- the Stats database full (a small tmpfs filled up; needs root), then freed;
- the Stats database locked by another client (SQLite's write lock, a PostgreSQL table lock);
- (PostgreSQL) the database server stopped, then started.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable

import msgspec

from lifeops_mesh.tools.reliability.driver import REQUEST_TIMEOUT_S, Driver
from lifeops_mesh.tools.reliability.report import Fault
from lifeops_mesh.tools.reliability.rig import AUTOSAVE_S, Rig
from mesh.testing.processes import AgentProcess

Action = Callable[[], Awaitable[None]]


class Planned(msgspec.Struct, frozen=True):
    name: str
    action: Action
    needs: str  # the request kind that needs the broken part: "log" (Stats) or "complete"


class Timing(msgspec.Struct, frozen=True):
    outage_s: float = 20.0  # broker (and, halved, database) outage
    hold_s: float = 8.0  # disk full, lock held (SQLite waits 5 s for a lock, then fails)
    stop_s: float = REQUEST_TIMEOUT_S + 2  # SIGSTOP: longer than a request's timeout


async def kill_restart(proc: AgentProcess) -> None:
    proc.signal(signal.SIGKILL)
    await asyncio.to_thread(proc.wait, 10)
    await asyncio.sleep(0.5)
    await asyncio.to_thread(proc.start)


async def exit_after_commit(proc: AgentProcess, commits: int) -> None:
    """Restart `proc` with the failpoint, wait for it to die after its `commits`-th commit
    (bounded: without traffic it is killed), start it again as it was."""
    await asyncio.to_thread(proc.stop)
    proc.env["LIFEOPS_FAILPOINT"] = f"exit_after_commit:{commits}"
    try:
        try:
            await asyncio.to_thread(proc.start)
        except AssertionError:  # died before it said "started": the failpoint, early
            pass
        try:
            await asyncio.to_thread(proc.wait, 30)
        except subprocess.TimeoutExpired:
            proc.kill()
    finally:
        del proc.env["LIFEOPS_FAILPOINT"]
    await asyncio.to_thread(proc.start)


async def pause(proc: AgentProcess, seconds: float) -> None:
    proc.signal(signal.SIGSTOP)
    try:
        await asyncio.sleep(seconds)
    finally:
        proc.signal(signal.SIGCONT)


def catalog(
    rig: Rig, rng: random.Random, timing: Timing, *, kills: int = 1
) -> tuple[list[Planned], list[str]]:
    """Every fault this rig can inject, once each (kill -9 `kills` times); and the ones it
    cannot, with the reason."""
    database, skipped = _database_faults(rig, timing)
    return [*_agent_faults(rig, rng, kills), *_broker_faults(rig, timing), *database], skipped


def _agent_faults(rig: Rig, rng: random.Random, kills: int) -> list[Planned]:
    out: list[Planned] = []
    for _ in range(kills):
        out.append(Planned("kill -9 stats", lambda: kill_restart(rig.stats), "log"))
        out.append(Planned("kill -9 lifeops", lambda: kill_restart(rig.lifeops), "complete"))
    out.append(
        Planned(
            "stats exits after a commit",
            lambda: exit_after_commit(rig.stats, rng.randint(2, 12)),
            "log",
        )
    )
    out.append(
        Planned(
            "lifeops exits after a commit",
            lambda: exit_after_commit(rig.lifeops, rng.randint(2, 12)),
            "complete",
        )
    )
    return out


def _broker_faults(rig: Rig, timing: Timing) -> list[Planned]:
    broker = rig.broker

    async def broker_restart() -> None:
        await asyncio.to_thread(broker.stop)
        await asyncio.to_thread(broker.start)

    async def broker_outage() -> None:
        await asyncio.to_thread(broker.kill)
        await asyncio.sleep(timing.outage_s)
        await asyncio.to_thread(broker.start)

    async def broker_kill_after_snapshot() -> None:
        await asyncio.sleep(AUTOSAVE_S + 0.5)  # a snapshot was written meanwhile...
        await asyncio.to_thread(broker.kill)  # ...and what came after it is lost
        await asyncio.to_thread(broker.start)

    return [
        Planned("mosquitto restart", broker_restart, "complete"),
        Planned("mosquitto SIGKILL after a snapshot", broker_kill_after_snapshot, "complete"),
        Planned(f"mosquitto SIGKILL + {timing.outage_s:g}s outage", broker_outage, "complete"),
        Planned(
            f"SIGSTOP stats {timing.stop_s:g}s", lambda: pause(rig.stats, timing.stop_s), "log"
        ),
    ]


def _database_faults(rig: Rig, timing: Timing) -> tuple[list[Planned], list[str]]:
    out = [
        Planned(
            f"stats database locked {timing.hold_s:g}s",
            lambda: rig.lock_stats_database(timing.hold_s),
            "log",
        )
    ]
    skipped: list[str] = []
    disk = rig.disk
    if disk is not None:

        async def disk_full() -> None:
            await asyncio.to_thread(disk.fill)
            try:
                await asyncio.sleep(timing.hold_s)
            finally:
                disk.free()

        out.append(Planned(f"stats disk full {timing.hold_s:g}s", disk_full, "log"))
    else:
        skipped.append("stats disk full: mounting a small tmpfs needs root")
    if rig.pg is not None:
        pg = rig.pg
        down = min(timing.outage_s, 10)

        async def db_outage() -> None:
            await asyncio.to_thread(pg.stop)
            await asyncio.sleep(down)
            await asyncio.to_thread(pg.start)

        out.append(Planned(f"postgresql outage {down:g}s", db_outage, "complete"))
    return out, skipped


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
