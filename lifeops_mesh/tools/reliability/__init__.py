"""`lifeops-mesh reliability`: break things on purpose and count what was lost or doubled.

A Mosquitto from broker/, Stats and LifeOps as real processes (`rig`), and a stream of timeline
completions and direct activity logs for many users (`driver`). During the stream the faults of
`faults` are injected; at the end the Stats database is compared with the totals expected from
the accepted requests (`report`). Loopback only; bounded in count and time.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from lifeops_mesh.tools.reliability import faults
from lifeops_mesh.tools.reliability.driver import Driver, timeline_items
from lifeops_mesh.tools.reliability.report import Fault, Report
from lifeops_mesh.tools.reliability.rig import Rig, rig
from mesh import MeshError


async def run(
    *,
    backend: str = "sqlite",
    users: int = 20,
    rate: float = 40.0,
    gap_s: float = 3.0,
    settle_s: float = 3.0,
    outage_s: float = 20.0,
    kills: int = 2,
    seed: int = 1,
    work_dir: Path | None = None,
    log: Callable[[str], None] = print,
) -> Report:
    if shutil.which("mosquitto", path=os.environ.get("PATH", "") + ":/usr/sbin") is None:
        raise MeshError("mosquitto is not installed (apt-get install mosquitto)")
    work = work_dir or Path(tempfile.mkdtemp(prefix="lifeops-reliability-"))
    started = time.monotonic()
    names = [f"rel{n:03d}" for n in range(users)]
    log(f"  logs and data in {work}")
    async with rig(backend, work) as r:
        items = await timeline_items(r.tester_url)
        driver = Driver(r.tester_url, names, random.Random(seed), items)
        log(f"reliability: {users} users on {backend}, {rate:g} requests/s during the faults")
        stop = asyncio.Event()
        drive_task = asyncio.create_task(driver.run(stop, rate=rate))
        injected: list[Fault] = []
        for planned in faults.plan(r, kills=kills, outage_s=outage_s):
            await asyncio.sleep(gap_s)
            log(f"  fault: {planned.name}")
            injected.append(await faults.inject(planned, driver, started))
        await asyncio.sleep(settle_s)  # traffic after the last fault
        stop.set()
        log("  stream stopping; waiting for requests in flight")
        await drive_task
        log(f"  stream done: {driver.accepted} accepted; waiting for receipts")
        report = await settle_and_count(r, driver, names, injected, log)
    report.duration_s = time.monotonic() - started
    return report


async def settle_and_count(
    r: Rig, driver: Driver, names: list[str], injected: list[Fault], log: Callable[[str], None]
) -> Report:
    """Quiesce (every accepted completion has its receipt, Stats' totals are stable), then
    count: lost = accepted activities Stats does not have; duplicated = users with more XP
    than their accepted activities grant."""
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
    return Report(
        backend=r.backend,
        users=len(names),
        faults=injected,
        sent=driver.sent,
        accepted=driver.accepted,
        lost=len(driver.expected_refs - refs),
        duplicated=sum(1 for u in names if stored.get(u, 0) > driver.expected[u]),
        expected_xp=sum(driver.expected.values()),
        stored_xp=sum(stored.get(u, 0) for u in names),
    )


__all__ = ["Report", "run"]
