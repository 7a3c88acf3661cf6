"""`lifeops-mesh reliability`: break things on purpose and count what was lost or doubled.

A Mosquitto from broker/, Stats and LifeOps as real processes, and a stream of timeline
completions and direct activity logs for many users (clients retry until they get an answer, as
the README tells outside clients to). During the stream: kill -9 of Stats and of LifeOps several
times, a clean Mosquitto restart, a Mosquitto outage, and for PostgreSQL a database outage. At the
end the Stats database is compared with the totals expected from the accepted requests.
Loopback only; bounded in count and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import msgspec

from lifeops_agent.timeline import load_timeline
from mesh.broker.process import MosquittoProcess
from mesh.client import MeshClient
from mesh.errors import MeshError
from mesh.schemas import ActivityLogRequest, TimelineCompleteRequest
from mesh.store import open_store
from mesh.testing.processes import AgentProcess


class Fault(msgspec.Struct):
    name: str
    at_s: float
    recovery_s: float | None = None  # from the end of the fault to the next answered request


class Report(msgspec.Struct):
    backend: str
    users: int
    faults: list[Fault]
    sent: int = 0
    accepted: int = 0
    lost: int = 0
    duplicated: int = 0
    expected_xp: int = 0
    stored_xp: int = 0
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated == 0

    def table(self) -> str:
        rows = [
            ("backend", self.backend),
            ("users", str(self.users)),
            ("faults injected", str(len(self.faults))),
            ("messages sent (requests incl. retries)", str(self.sent)),
            ("accepted", str(self.accepted)),
            ("lost", str(self.lost)),
            ("duplicated", str(self.duplicated)),
            ("XP expected / stored", f"{self.expected_xp} / {self.stored_xp}"),
            ("run time", f"{self.duration_s:.1f} s"),
        ]
        width = max(len(k) for k, _ in rows)
        out = [f"{k:<{width}}  {v}" for k, v in rows]
        out.append("")
        out.append(f"{'fault':<28} {'at':>7} {'recovery':>9}")
        for f in self.faults:
            rec = f"{f.recovery_s:.2f} s" if f.recovery_s is not None else "-"
            out.append(f"{f.name:<28} {f.at_s:>6.1f}s {rec:>9}")
        return "\n".join(out)


@contextlib.contextmanager
def _database(
    backend: str, work: Path
) -> Iterator[tuple[str, str, Callable[[], None] | None, Callable[[], None] | None]]:
    """(stats URL, lifeops URL, stop, start) for the backend."""
    if backend == "sqlite":
        yield f"sqlite:///{work / 'stats.db'}", f"sqlite:///{work / 'lifeops.db'}", None, None
        return
    from mesh.testing.postgres import _private_cluster, run_sync

    with _private_cluster() as server:
        stats_url = run_sync(server.create_database())
        lifeops_url = run_sync(server.create_database())
        data, bindir, as_user = server.data_dir, server.bindir, server.as_user
        assert data is not None and bindir is not None

        def stop() -> None:
            subprocess.run(
                [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                capture_output=True,
                timeout=60,
                check=True,
            )

        def start() -> None:
            subprocess.run(
                [
                    *as_user,
                    str(bindir / "pg_ctl"),
                    "-D",
                    str(data),
                    "-l",
                    str(data.parent / "log"),
                    "-o",
                    server.options,
                    "-w",
                    "start",
                ],
                capture_output=True,
                timeout=60,
                check=True,
            )

        yield stats_url, lifeops_url, stop, start


class Driver:
    """Sends requests at a steady rate until told to stop; each is retried until answered."""

    def __init__(self, url: str, users: list[str], rng: random.Random) -> None:
        self.url = url
        self.users = users
        self.rng = rng
        self.items = load_timeline().items
        self.xp = {i.code: sum(i.xp.values()) for i in self.items}
        self.expected: dict[str, int] = dict.fromkeys(users, 0)
        self.expected_refs: set[tuple[str, str]] = set()  # (source, source_ref) in Stats
        self.sent = 0
        self.accepted = 0
        self.last_ok: dict[str, float] = {"complete": 0.0, "log": 0.0}
        self.failures: list[str] = []

    def work(self) -> Iterator[tuple[str, str, TimelineCompleteRequest | ActivityLogRequest]]:
        """Completions of past days (each user, item and day once) and direct activity logs."""
        now = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
        for back in range(1, 3650):
            at = now - dt.timedelta(days=back)
            batch: list[tuple[str, str, TimelineCompleteRequest | ActivityLogRequest]] = []
            for uid in self.users:
                for item in self.items:
                    batch.append(
                        (
                            "complete",
                            uid,
                            TimelineCompleteRequest(
                                user_id=uid, item_code=item.code, completed_at=at
                            ),
                        )
                    )
                batch.append(
                    (
                        "log",
                        uid,
                        ActivityLogRequest(
                            user_id=uid,
                            activity_type="reading",
                            source="manual",
                            source_ref=f"rel-{uid}-{back}",
                        ),
                    )
                )
            self.rng.shuffle(batch)
            yield from batch

    async def one(
        self,
        client: MeshClient,
        kind: str,
        uid: str,
        req: TimelineCompleteRequest | ActivityLogRequest,
        deadline_s: float = 180,
    ) -> None:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            self.sent += 1
            try:
                key = "timeline_complete" if kind == "complete" else "activities_log"
                r = await client.request(key, req, timeout=3)
            except MeshError:
                await asyncio.sleep(0.3)
                continue
            self.last_ok[kind] = time.monotonic()
            if isinstance(req, TimelineCompleteRequest):
                if r.success or (r.error and r.error.code == "already_completed"):
                    assert req.completed_at is not None
                    self.accepted += 1
                    self.expected[uid] += self.xp[req.item_code]
                    day = req.completed_at.date().isoformat()
                    self.expected_refs.add(("lifeops", f"{uid}:{req.item_code}:{day}"))
                    return
            elif r.success:
                self.accepted += 1
                self.expected[uid] += 30
                self.expected_refs.add(("manual", req.source_ref or ""))
                return
            self.failures.append(f"refused: {r.error}")
            return
        self.failures.append(f"no answer within {deadline_s}s")

    async def run(self, stop: asyncio.Event, *, rate: float = 40.0, concurrency: int = 8) -> None:
        sem = asyncio.Semaphore(concurrency)
        tasks: set[asyncio.Task[None]] = set()
        async with MeshClient(self.url) as client:
            for kind, uid, req in self.work():
                if stop.is_set():
                    break
                await sem.acquire()

                async def go(kind: str = kind, uid: str = uid, req: object = req) -> None:
                    try:
                        await self.one(client, kind, uid, req)  # type: ignore[arg-type]
                    finally:
                        sem.release()

                task = asyncio.create_task(go())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                await asyncio.sleep(1 / rate)
            if tasks:
                await asyncio.gather(*tasks)


async def _stats_totals(url: str) -> dict[str, int]:
    async with open_store(url) as store, store.transaction() as tx:
        rows = await tx.fetchall("SELECT user_id, total_xp FROM stats_characters")
    return {r[0]: int(r[1]) for r in rows}


async def _stats_refs(url: str) -> set[tuple[str, str]]:
    async with open_store(url) as store, store.transaction() as tx:
        rows = await tx.fetchall("SELECT source, source_ref FROM stats_activities")
    return {(r[0], r[1]) for r in rows}


async def _receipts_pending(url: str) -> int:
    async with open_store(url) as store, store.transaction() as tx:
        row = await tx.fetchone("SELECT COUNT(*) FROM mesh_receipts WHERE receipt_at IS NULL")
    return int(row[0]) if row else 0


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
    rng = random.Random(seed)
    work = work_dir or Path(tempfile.mkdtemp(prefix="lifeops-reliability-"))
    started = time.monotonic()
    faults: list[Fault] = []
    names = [f"rel{n:03d}" for n in range(users)]
    with _database(backend, work) as (stats_db, lifeops_db, db_stop, db_start):
        broker = MosquittoProcess(work / "broker")
        await asyncio.to_thread(broker.start)
        stats = AgentProcess(
            "stats",
            broker.url("stats"),
            stats_db,
            data_dir=work,
            instance="rel",
            log_file=work / "stats.log",
        )
        lifeops = AgentProcess(
            "lifeops",
            broker.url("lifeops"),
            lifeops_db,
            data_dir=work,
            instance="rel",
            log_file=work / "lifeops.log",
        )
        log(f"  logs and data in {work}")
        await asyncio.to_thread(stats.start)
        await asyncio.to_thread(lifeops.start)
        driver = Driver(broker.url("tester"), names, rng)
        log(f"reliability: {users} users on {backend}, {rate:g} requests/s during the faults")

        async def fault(
            name: str, action: Callable[[], Awaitable[None]], kind: str = "log"
        ) -> None:
            """`kind`: the request that needs the broken part (log: Stats, complete: LifeOps)."""
            f = Fault(name=name, at_s=time.monotonic() - started)
            faults.append(f)
            log(f"  fault: {name}")
            await action()
            end = time.monotonic()
            for _ in range(300):
                if driver.last_ok[kind] > end:
                    f.recovery_s = driver.last_ok[kind] - end
                    return
                await asyncio.sleep(0.1)

        async def kill_restart(proc: AgentProcess) -> None:
            proc.signal(signal.SIGKILL)
            await asyncio.to_thread(proc.wait, 10)
            await asyncio.sleep(0.5)
            await asyncio.to_thread(proc.start)

        async def broker_restart() -> None:
            await asyncio.to_thread(broker.stop)
            await asyncio.to_thread(broker.start)

        async def broker_outage() -> None:
            await asyncio.to_thread(broker.kill)
            await asyncio.sleep(outage_s)
            await asyncio.to_thread(broker.start)

        async def db_outage() -> None:
            assert db_stop is not None and db_start is not None
            await asyncio.to_thread(db_stop)
            await asyncio.sleep(min(outage_s, 10))
            await asyncio.to_thread(db_start)

        async def faults_plan() -> None:
            plan: list[tuple[str, Callable[[], Awaitable[None]], str]] = []
            for n in range(kills):
                plan.append((f"kill -9 stats #{n + 1}", lambda: kill_restart(stats), "log"))
                plan.append(
                    (f"kill -9 lifeops #{n + 1}", lambda: kill_restart(lifeops), "complete")
                )
            plan.append(("mosquitto restart", broker_restart, "complete"))
            plan.append((f"mosquitto SIGKILL + {outage_s:g}s outage", broker_outage, "complete"))
            if db_stop is not None:
                plan.append((f"postgresql outage {min(outage_s, 10):g}s", db_outage, "complete"))
            for name, action, kind in plan:
                await asyncio.sleep(gap_s)
                await fault(name, action, kind)

        stop = asyncio.Event()
        drive_task = asyncio.create_task(driver.run(stop, rate=rate))
        await faults_plan()
        await asyncio.sleep(settle_s)  # traffic after the last fault
        stop.set()
        log("  stream stopping; waiting for requests in flight")
        await drive_task
        log(f"  stream done: {driver.accepted} accepted; waiting for receipts")
        # Quiesce: every accepted completion has its receipt, Stats' totals are stable.
        pending = -1
        for _ in range(600):
            pending = await _receipts_pending(lifeops_db)
            if pending == 0:
                break
            await asyncio.sleep(0.2)
        log(f"  receipts pending: {pending}")
        await asyncio.sleep(2)
        stored = await _stats_totals(stats_db)
        refs = await _stats_refs(stats_db)
        await asyncio.to_thread(lifeops.stop)
        await asyncio.to_thread(stats.stop)
        await asyncio.to_thread(broker.stop)
    # lost: accepted activities Stats does not have; duplicated: users with more XP than their
    # accepted activities grant (an activity counted twice).
    if driver.failures:
        raise MeshError(f"{len(driver.failures)} requests failed: {driver.failures[:3]}")
    lost = len(driver.expected_refs - refs)
    dup = sum(1 for u in names if stored.get(u, 0) > driver.expected[u])
    return Report(
        backend=backend,
        users=users,
        faults=faults,
        sent=driver.sent,
        accepted=driver.accepted,
        lost=lost,
        duplicated=dup,
        expected_xp=sum(driver.expected.values()),
        stored_xp=sum(stored.get(u, 0) for u in names),
        duration_s=time.monotonic() - started,
    )
