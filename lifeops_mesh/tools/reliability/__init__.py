"""`lifeops-mesh reliability`: break things on purpose and count what was lost or doubled.

A Mosquitto from broker/, Stats and LifeOps as real processes (`rig`), and a stream of timeline
completions, keyed and keyless activity logs for many users (`driver`). During the stream the
faults of `faults` are injected: each kind once (the short form), or for `duration_s` one every
5-10 s drawn at random from all of them (the long form, the shape of Jepsen's queue tests).
Then the mesh drains, and `report` counts per message (lost, duplicated), per event (committed,
delivered live to a durable subscriber, listed by stats/events/recent) and per retained state
(the broker's copy equal to the database's). Loopback only; bounded in count and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from lifeops_mesh.tools.reliability import faults
from lifeops_mesh.tools.reliability.driver import Driver, timeline_items
from lifeops_mesh.tools.reliability.faults import Planned, Timing
from lifeops_mesh.tools.reliability.observe import EventListener, caught_up, retained
from lifeops_mesh.tools.reliability.report import Fault, Report
from lifeops_mesh.tools.reliability.rig import Rig, rig
from mesh import MeshError
from mesh.testing.wait import eventually

Log = Callable[[str], None]


async def run(
    *,
    backend: str = "sqlite",
    users: int = 20,
    rate: float = 40.0,
    gap_s: float = 3.0,
    settle_s: float = 3.0,
    timing: Timing | None = None,
    duration_s: float | None = None,
    kills: int = 1,
    seed: int = 1,
    work_dir: Path | None = None,
    log: Log = print,
) -> Report:
    """One run: each fault once `gap_s` apart, or with `duration_s` a fault every 5-10 s for
    that long (rounds of every kind in a random order)."""
    if shutil.which("mosquitto", path=os.environ.get("PATH", "") + ":/usr/sbin") is None:
        raise MeshError("mosquitto is not installed (apt-get install mosquitto)")
    work = work_dir or Path(tempfile.mkdtemp(prefix="lifeops-reliability-"))
    started = time.monotonic()
    rng = random.Random(seed)
    names = [f"rel{n:03d}" for n in range(users)]
    keyless = [f"relk{n:03d}" for n in range(max(1, users // 4))]
    log(f"  logs and data in {work}")
    async with rig(backend, work) as r:
        since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
        listener = EventListener(r.tester_url)
        await listener.start()
        items = await timeline_items(r.tester_url)
        driver = Driver(r.tester_url, names, rng, items, keyless_users=keyless)
        log(
            f"reliability: {users} + {len(keyless)} keyless users on {backend}, {rate:g} requests/s"
        )
        stop = asyncio.Event()
        drive_task = asyncio.create_task(driver.run(stop, rate=rate))
        planned, skipped = faults.catalog(r, rng, timing or Timing(), kills=kills)
        for why in skipped:
            log(f"  not injected: {why}")
        injected = await _inject_all(planned, driver, rng, started, gap_s, duration_s, log)
        await asyncio.sleep(settle_s)  # traffic after the last fault
        stop.set()
        log("  stream stopping; waiting for requests in flight")
        await drive_task
        log(f"  stream done: {driver.accepted} accepted; waiting for receipts")
        report = await settle_and_count(r, driver, injected, log)
        report.skipped = skipped
        await _count_events(r, listener, [*names, *keyless], since, report)
        await listener.stop()
    report.duration_s = time.monotonic() - started
    return report


async def _inject_all(
    planned: list[Planned],
    driver: Driver,
    rng: random.Random,
    started: float,
    gap_s: float,
    duration_s: float | None,
    log: Log,
) -> list[Fault]:
    injected: list[Fault] = []
    if duration_s is None:
        for p in planned:
            await asyncio.sleep(gap_s)
            log(f"  fault: {p.name}")
            injected.append(await faults.inject(p, driver, started))
        return injected
    end = time.monotonic() + duration_s
    deck: list[Planned] = []
    while True:
        await asyncio.sleep(rng.uniform(5, 10))
        if time.monotonic() >= end:
            return injected
        if not deck:  # every kind once per round, in a random order: none is left out
            deck = rng.sample(planned, len(planned))
        p = deck.pop()
        log(f"  fault at {time.monotonic() - started:.0f}s: {p.name}")
        injected.append(await faults.inject(p, driver, started))


async def settle_and_count(r: Rig, driver: Driver, injected: list[Fault], log: Log) -> Report:
    """Quiesce (every accepted completion has its receipt, the retained states are out), then
    count per message: lost = accepted activities Stats does not have; duplicated = activities
    Stats has that no accepted request explains, and keyless logs counted more than once."""
    pending = -1
    for _ in range(600):
        pending = await r.receipts_pending()
        if pending == 0:
            break
        await asyncio.sleep(0.2)
    log(f"  receipts pending: {pending}")
    await asyncio.sleep(2)
    stored = await r.stats_totals()
    refs = await r.stats_refs()
    if driver.failures:
        raise MeshError(f"{len(driver.failures)} requests failed: {driver.failures[:3]}")
    lost = len(driver.expected_refs - refs)
    duplicated = len(refs - driver.expected_refs)
    for uid, accepted in driver.keyless_accepted.items():
        counted = stored.get(uid, 0) // Driver.KEYLESS_XP
        lost += max(0, accepted - counted)
        duplicated += max(0, counted - accepted)
    everyone = [*driver.users, *driver.keyless_users]
    expected_xp = sum(driver.expected.values()) + Driver.KEYLESS_XP * sum(
        driver.keyless_accepted.values()
    )
    report = Report(
        backend=r.backend,
        users=len(everyone),
        faults=injected,
        sent=driver.sent,
        accepted=driver.accepted,
        lost=lost,
        duplicated=duplicated,
        expected_xp=expected_xp,
        stored_xp=sum(stored.get(u, 0) for u in everyone),
    )
    report.states, report.states_stale = await _compare_states(r)
    return report


async def _compare_states(r: Rig, timeout_s: float = 20) -> tuple[int, int]:
    """Retained state topics, and how many the broker holds differently from the databases
    (compared until equal, bounded: the agents publish what they committed last)."""
    deadline = time.monotonic() + timeout_s
    while True:
        committed = await r.committed_states()
        held = await retained(r.tester_url, sorted(committed))
        stale = sum(1 for t, p in committed.items() if held.get(t) != p)
        if stale == 0 or time.monotonic() > deadline:
            return len(committed), stale
        await asyncio.sleep(1)


async def _count_events(
    r: Rig, listener: EventListener, users: list[str], since: dt.datetime, report: Report
) -> None:
    committed = await r.committed_events()

    async def all_arrived() -> bool:
        return committed <= set(listener.received)

    with contextlib.suppress(AssertionError):  # the relay may still be publishing; bounded
        await eventually(all_arrived, timeout=10, interval=0.2, what="events")
    live = set(listener.received)
    listed = await caught_up(r.tester_url, users, since)
    report.events_committed = len(committed)
    report.events_live = len(live & committed)
    report.events_caught_up = len(listed & committed)
    report.events_unrecoverable = len(committed - live - listed)
    report.events_phantom = len(live - committed)


__all__ = ["Report", "Timing", "run"]
