"""LifeOps Mesh benchmark: the mesh against the broker's limit and against the HTTP design.

One run, one machine, one broker config (the project's broker/mosquitto.conf). Every figure is
printed with its ratio to (1), the bare gmqtt request/response echo measured in the same run.

    .venv/bin/python bench/run.py            # the whole table (a few minutes)
    .venv/bin/python bench/run.py --quick    # fewer requests, for a smoke run

Load loops are bounded: a fixed number of requests per scenario, every wait has a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any

import msgspec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lifeops_contract import contract  # noqa: E402
from lifeops_contract.schemas import ActivityLogRequest, TimelineCompleteRequest  # noqa: E402
from lifeops_mesh.broker import local_broker  # noqa: E402
from lifeops_mesh.processes import agent_process  # noqa: E402
from mesh import Inbound, MeshClient, codec, plain_transport  # noqa: E402
from mesh.broker.process import MosquittoProcess, free_port  # noqa: E402
from mesh.testing.processes import AgentProcess  # noqa: E402

READING_XP = 30  # stats_agent/default_rules.toml: reading grants INT+30
BENCH_ACL = "user bench\ntopic readwrite #\n"  # a scratch account on a scratch broker


class Result(msgspec.Struct):
    name: str
    rate: float
    p50_ms: float
    p99_ms: float
    note: str = ""


async def load(call: Callable[[int], Awaitable[Any]], n: int, inflight: int) -> Result:
    sem = asyncio.Semaphore(inflight)
    lat: list[float] = []

    async def one(i: int) -> None:
        async with sem:
            t = time.perf_counter()
            await call(i)
            lat.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    elapsed = time.perf_counter() - t0
    lat.sort()
    return Result("", n / elapsed, lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.99)] * 1000)


def rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of a process in MB."""
    cur = peak = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            cur = int(line.split()[1]) / 1024
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) / 1024
    return cur, peak


class Echo:
    """(1): a gmqtt requester against the echo process."""

    def __init__(self, url: str) -> None:
        self.t = plain_transport(url, prefix="bench-req")
        self.pending: dict[bytes, asyncio.Future[bytes]] = {}
        self.reply = f"bench/reply/{uuid.uuid4().hex[:6]}"

    async def _on(self, msg: Inbound) -> int:
        fut = self.pending.pop(msg.correlation_data or b"", None)
        if fut is not None and not fut.done():
            fut.set_result(msg.payload)
        return 0

    async def __aenter__(self) -> Echo:
        self.t.on_message = self._on
        await self.t.subscribe([self.reply])
        await self.t.connect()
        await asyncio.sleep(0.2)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.t.disconnect()

    async def call(self, i: int) -> None:
        cid = uuid.uuid4().bytes
        fut = asyncio.get_running_loop().create_future()
        self.pending[cid] = fut
        body = codec.encode(ActivityLogRequest(user_id=f"u{i % 1000}", activity_type="reading"))
        await self.t.publish("bench/echo", body, response_topic=self.reply, correlation_data=cid)
        await asyncio.wait_for(fut, 30)


def spawn(args: list[str], ready: str = "ready", timeout: float = 30) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if ready in line:
            # Keep draining: a service that logs into a full pipe blocks in its log handler.
            # (This, not FastStream, was why the FastStream row once timed out: its access log
            # filled the 64 KiB pipe after 376 requests and the service stopped in write().)
            threading.Thread(target=_drain, args=(proc.stdout,), daemon=True).start()
            return proc
        if proc.poll() is not None:
            raise RuntimeError(f"{args} exited {proc.returncode}")
    raise RuntimeError(f"{args} not ready in {timeout}s")


def _drain(stream: IO[str]) -> None:
    for _ in stream:
        pass


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def activity_caller(client: MeshClient, users: int) -> Callable[[int], Awaitable[None]]:
    """Request i: one `stats/activities/log` for user u<i % users>, a source_ref new to this run."""
    run = uuid.uuid4().hex[:6]

    async def call(i: int) -> None:
        r = await client.request(
            "activities_log",
            ActivityLogRequest(
                user_id=f"u{i % users}", activity_type="reading", source_ref=f"{run}-{i}"
            ),
            timeout=60,
        )
        assert r.success, r.error

    return call


def start_stats(broker: MosquittoProcess, db_url: str, work: Path) -> AgentProcess:
    """A Stats agent as its own process, warnings only."""
    agent = agent_process(
        "stats",
        broker.url("stats"),
        db_url,
        data_dir=work,
        instance=uuid.uuid4().hex[:6],
        env={"LIFEOPS_LOG_LEVEL": "WARNING"},
    )
    agent.start()
    return agent


async def bench_stats(
    broker: MosquittoProcess,
    db_url: str,
    work: Path,
    n: int,
    inflight: int,
    label: str,
    *,
    single: bool = True,
) -> tuple[Result, Result, float, float]:
    """(2): stats/activities/log end to end; also one-in-flight latency and the agent's RSS."""
    agent = start_stats(broker, db_url, work)
    assert agent.proc is not None
    idle_rss, _ = rss_mb(agent.proc.pid)
    async with MeshClient(broker.url("tester"), contract()) as client:
        call = activity_caller(client, users=1000)

        await load(call, min(500, n), inflight)  # warm-up
        res = await load(lambda i: call(i + 10_000_000), n, inflight)
        alone = await load(lambda i: call(i + 20_000_000), min(300, n) if single else 1, 1)
    _, peak = rss_mb(agent.proc.pid)
    agent.stop()
    res.name = label
    alone.name = label + ", 1 in flight"
    return res, alone, idle_rss, peak


class Scale(msgspec.Struct):
    instances: int
    result: Result
    accepted: int  # requests answered with success
    stored: int  # rows in stats_activities afterwards
    total_xp: int  # sum of stats_characters.total_xp afterwards
    expected_xp: int


async def bench_scale(
    broker: MosquittoProcess, pg: Any, work: Path, n: int, inflight: int, counts: tuple[int, ...]
) -> list[Scale]:
    """(6): 1, 2, 3 Stats instances behind `$share/stats/...` on one PostgreSQL database each
    run; afterwards the database must hold exactly one activity and its XP per accepted request."""
    import asyncpg

    from mesh.testing.postgres import run_sync

    out = []
    for k in counts:
        db = run_sync(pg.create_database())
        agents = [
            agent_process(
                "stats",
                broker.url("stats"),
                db,
                data_dir=work,
                instance=f"s{k}-{j}-{uuid.uuid4().hex[:4]}",
                env={"LIFEOPS_LOG_LEVEL": "WARNING"},
                extra_args=["--shared", "stats"],
            )
            for j in range(k)
        ]
        try:
            for agent in agents:
                agent.start()
            accepted = 0
            async with MeshClient(broker.url("tester"), contract()) as client:
                call = activity_caller(client, users=1000)

                async def counted(i: int, call: Callable[[int], Awaitable[None]] = call) -> None:
                    nonlocal accepted
                    await call(i)
                    accepted += 1

                await load(counted, min(500, n), inflight)  # warm-up
                res = await load(lambda i: counted(i + 10_000_000), n, inflight)
        finally:
            for agent in agents:
                agent.stop()
        conn = await asyncpg.connect(db)
        try:
            stored = await conn.fetchval("SELECT count(*) FROM stats_activities")
            total = await conn.fetchval("SELECT coalesce(sum(total_xp), 0) FROM stats_characters")
        finally:
            await conn.close()
            run_sync(pg.drop_database(db))
        res.name = f"(6) Stats (PostgreSQL), {k} instance{'s' if k > 1 else ''}, $share/stats"
        # "reading" grants INT+30 (default_rules.toml); no level-up bonus XP on this path
        out.append(Scale(k, res, accepted, int(stored), int(total), accepted * READING_XP))
    return out


async def bench_growth(
    broker: MosquittoProcess, work: Path, n: int, inflight: int, users: int, activities: int
) -> tuple[Result, Result, float]:
    """(2) on SQLite on a database that already holds `users` and `activities`, against the
    same on an empty database, alternating three times each (best of three: single runs on a
    shared 2-core machine vary by 15%). Returns (grown, empty, seconds spent seeding)."""
    from bench.growth import seed_sqlite

    grown = work / "grown.db"
    seconds = await asyncio.to_thread(seed_sqlite, grown, users, activities)
    best: dict[str, Result] = {}
    for round_ in range(3):
        for kind, url in (
            ("empty", f"sqlite:///{work / f'empty-{round_}.db'}"),
            ("grown", f"sqlite:///{grown}"),
        ):
            res, _, _, _ = await bench_stats(broker, url, work, n, inflight, kind, single=False)
            if kind not in best or res.rate > best[kind].rate:
                best[kind] = res
    best["grown"].name = f"(2) Stats (SQLite), {users:,} users, {activities:,} activities"
    best["empty"].name = "(2) Stats (SQLite), empty database, same runs"
    return best["grown"], best["empty"], seconds


async def bench_soak(
    broker: MosquittoProcess, work: Path, seconds: float, inflight: int
) -> list[tuple[float, float]]:
    """Load on Stats (SQLite) for `seconds`; (elapsed s, RSS MB) sampled after each batch."""
    agent = start_stats(broker, f"sqlite:///{work / 'soak.db'}", work)
    assert agent.proc is not None
    samples = [(0.0, rss_mb(agent.proc.pid)[0])]
    t0 = time.monotonic()
    batch = 0
    async with MeshClient(broker.url("tester"), contract()) as client:
        call = activity_caller(client, users=5000)

        while time.monotonic() - t0 < seconds:
            base = batch * 2000

            async def shifted(i: int, base: int = base) -> None:
                await call(base + i)

            await load(shifted, 2000, inflight)
            batch += 1
            samples.append((time.monotonic() - t0, rss_mb(agent.proc.pid)[0]))
    agent.stop()
    return samples


def slope_mb_per_min(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of RSS over time, after the first minute (warm-up)."""
    pts = [(t, m) for t, m in samples if t >= 60] or samples
    if len(pts) < 2:
        return 0.0
    mt = sum(t for t, _ in pts) / len(pts)
    mm = sum(m for _, m in pts) / len(pts)
    den = sum((t - mt) ** 2 for t, _ in pts) or 1.0
    return sum((t - mt) * (m - mm) for t, m in pts) / den * 60


async def bench_chain(
    broker: MosquittoProcess, work: Path, n: int, inflight: int
) -> tuple[Result, float]:
    """(3): lifeops/timeline/complete -> LifeOps -> Stats -> reply."""
    tag = uuid.uuid4().hex[:6]
    stats = agent_process(
        "stats",
        broker.url("stats"),
        f"sqlite:///{work / f'cs{tag}.db'}",
        data_dir=work,
        instance="c" + tag,
        env={"LIFEOPS_LOG_LEVEL": "WARNING"},
    )
    lifeops = agent_process(
        "lifeops",
        broker.url("lifeops"),
        f"sqlite:///{work / f'cl{tag}.db'}",
        data_dir=work,
        instance="c" + tag,
        env={"LIFEOPS_LOG_LEVEL": "WARNING"},
    )
    stats.start()
    lifeops.start()
    items = [
        "morning_stretch",
        "meditation",
        "gym_session",
        "walk",
        "reading",
        "journaling",
        "call_a_friend",
    ]
    now = dt.datetime.now(dt.UTC)
    async with MeshClient(broker.url("tester"), contract()) as client:
        users = 500

        async def call(i: int) -> None:
            rest, user = divmod(i, users)
            day, item = divmod(rest, 7)
            r = await client.request(
                "timeline_complete",
                TimelineCompleteRequest(
                    user_id=f"c{tag}{user}",
                    item_code=items[item],
                    completed_at=now - dt.timedelta(days=day + 1),
                ),
                timeout=60,
            )
            assert r.success and not r.xp_pending, r

        res = await load(call, n, inflight)
    assert lifeops.proc is not None
    _, peak = rss_mb(lifeops.proc.pid)
    lifeops.stop()
    stats.stop()
    res.name = "(3) timeline/complete -> LifeOps -> Stats (SQLite)"
    return res, peak


async def bench_http(work: Path, n: int, inflight: int) -> list[Result]:
    """(4): the seed's HTTP design, with three clients."""
    import aiohttp
    import httpx

    port = free_port()
    proc = spawn(
        [
            sys.executable,
            "-c",
            "import sys, uvicorn; sys.path.insert(0, 'bench');"
            "from http_service import build;"
            f"print('ready', flush=True); uvicorn.run(build('{work / 'http.db'}'),"
            f" host='127.0.0.1', port={port}, log_level='warning', access_log=False,"
            " timeout_keep_alive=120)",
        ]
    )
    url = f"http://127.0.0.1:{port}/activities"
    for _ in range(100):
        try:
            async with httpx.AsyncClient() as c:
                await c.post(url, json={"user_id": "w", "activity_type": "reading"})
            break
        except httpx.HTTPError:
            await asyncio.sleep(0.1)
    out = []
    run = uuid.uuid4().hex[:6]

    def body(i: int, tag: str) -> dict[str, str]:
        return {
            "user_id": f"u{i % 1000}",
            "activity_type": "reading",
            "source_ref": f"{run}-{tag}-{i}",
        }

    async def new_client(i: int) -> None:
        async with httpx.AsyncClient() as c:
            r = await c.post(url, json=body(i, "a"))
            assert r.json()["success"]

    r = await load(new_client, max(200, n // 10), min(inflight, 64))
    r.name = "(4a) HTTP: FastAPI + new httpx client per request"
    r.note = f"{max(200, n // 10)} requests, 64 in flight (more exhausts ports)"
    out.append(r)
    limits = httpx.Limits(max_connections=inflight, max_keepalive_connections=inflight)
    async with httpx.AsyncClient(limits=limits, timeout=60) as pooled:

        async def pooled_call(i: int) -> None:
            r = await pooled.post(url, json=body(i, "b"))
            assert r.json()["success"]

        try:
            r = await load(pooled_call, n, inflight)
        except httpx.HTTPError as exc:  # seen once: a reset connection under 256 in flight
            r = Result("", 0.0, 0.0, 0.0, note=f"failed: {type(exc).__name__}")
        r.name = "(4b) HTTP: FastAPI + one pooled httpx client"
        out.append(r)
    conn = aiohttp.TCPConnector(limit=inflight)
    async with aiohttp.ClientSession(connector=conn) as session:

        async def aio_call(i: int) -> None:
            async with session.post(url, json=body(i, "c")) as resp:
                assert (await resp.json())["success"]

        r = await load(aio_call, n, inflight)
        r.name = "(4c) HTTP: FastAPI + pooled aiohttp (fastest client found)"
        out.append(r)
    stop(proc)
    return out


async def bench_faststream(
    broker: MosquittoProcess, work: Path, n: int, inflight: int
) -> Result | None:
    """(5): FastStream's MQTT request/response doing the same work."""
    try:
        from faststream.mqtt import MQTTBroker, QoS
    except ImportError:
        return None
    url = broker.url("bench")
    proc = spawn(
        [sys.executable, str(ROOT / "bench" / "faststream_service.py"), url, str(work / "fs.db")]
    )
    client = MQTTBroker(url, client_id=f"bench-fs-{uuid.uuid4().hex[:6]}", log_level=30)
    run = uuid.uuid4().hex[:6]
    try:
        async with client:
            await client.start()

            async def call(i: int) -> None:
                msg = await client.request(
                    {
                        "user_id": f"u{i % 1000}",
                        "activity_type": "reading",
                        "source_ref": f"{run}-{i}",
                    },
                    "bench/faststream",
                    timeout=30,
                    qos=QoS.AT_LEAST_ONCE,
                )
                assert b"success" in msg.body

            await load(call, min(500, n), inflight)  # warm-up, as for every other row
            r = await load(lambda i: call(i + 10_000_000), n, inflight)
    finally:
        stop(proc)
    r.name = "(5) FastStream MQTT request/response"
    return r


def table(results: list[Result], base: Result) -> str:
    lines = [f"{'scenario':<58} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'vs (1)':>7}"]
    for r in results:
        lines.append(
            f"{r.name:<58} {r.rate:>8.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} "
            f"{r.rate / base.rate:>6.0%}" + (f"  ({r.note})" if r.note else "")
        )
    return "\n".join(lines)


def scale_table(rows: list[Scale], base: Result) -> str:
    lines = [
        f"{'Stats instances on one PostgreSQL':<34} {'req/s':>8} {'vs 1':>6} {'vs (1)':>7} "
        f"{'accepted':>9} {'stored':>7} {'total XP':>9} {'exact':>6}"
    ]
    one = rows[0].result.rate
    for r in rows:
        exact = r.stored == r.accepted and r.total_xp == r.expected_xp
        lines.append(
            f"{r.instances:<34} {r.result.rate:>8.0f} {r.result.rate / one:>6.2f} "
            f"{r.result.rate / base.rate:>6.0%} {r.accepted:>9} {r.stored:>7} {r.total_xp:>9} "
            f"{'yes' if exact else 'NO':>6}"
        )
    return "\n".join(lines)


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--inflight", type=int, default=256)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--growth",
        type=int,
        nargs=2,
        metavar=("USERS", "ACTIVITIES"),
        help="also run (2) on a database seeded with USERS and ACTIVITIES (e.g. 100000 1000000)",
    )
    ap.add_argument(
        "--soak", type=float, default=0, metavar="S", help="also load Stats for S seconds, RSS"
    )
    ap.add_argument(
        "--pg",
        default=os.environ.get(
            "LIFEOPS_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    ap.add_argument("--no-scale", action="store_true", help="skip (6), the scale table")
    args = ap.parse_args()
    n = 3000 if args.quick else args.requests
    work = Path(tempfile.mkdtemp(prefix="lifeops-bench-"))
    broker = local_broker(work / "broker", extra_acl=BENCH_ACL, extra_accounts=("bench",))
    broker.start()
    results: list[Result] = []
    try:
        echo_proc = spawn([sys.executable, str(ROOT / "bench" / "echo.py"), broker.url("bench")])
        async with Echo(broker.url("bench")) as echo:
            await load(echo.call, min(2000, n), args.inflight)
            base = await load(echo.call, n, args.inflight)
            base.name = "(1) limit: bare gmqtt v5 request/response echo, QoS 1"
            single_echo = await load(echo.call, min(300, n), 1)
            single_echo.name = "(1) echo, 1 in flight"
        stop(echo_proc)
        results.append(base)
        sq, sq1, idle, peak_sq = await bench_stats(
            broker,
            f"sqlite:///{work / 'stats.db'}",
            work,
            n,
            args.inflight,
            "(2) stats/activities/log via Stats (SQLite)",
        )
        results += [sq]
        normal, _, _, _ = await bench_stats(
            broker,
            f"sqlite:///{work / 'stats-normal.db'}?synchronous=normal",
            work,
            n,
            args.inflight,
            "(2) the same, SQLite synchronous=NORMAL (not durable)",
            single=False,
        )
        results += [normal]
        from mesh.testing.postgres import PostgresServer, postgres_server, run_sync

        with postgres_server() as pg:
            assert isinstance(pg, PostgresServer)
            db = run_sync(pg.create_database())
            try:
                pgr, _, _, peak_pg = await bench_stats(
                    broker,
                    db,
                    work,
                    n,
                    args.inflight,
                    "(2) stats/activities/log via Stats (PostgreSQL)",
                )
            finally:
                run_sync(pg.drop_database(db))
            scale = await bench_scale(
                broker, pg, work, n, args.inflight, () if args.no_scale else (1, 2, 3)
            )
        results.append(pgr)
        chain, peak_chain = await bench_chain(broker, work, max(1000, n // 4), args.inflight)
        results.append(chain)
        results += await bench_http(work, max(1000, n // 4), args.inflight)
        fs = await bench_faststream(broker, work, max(1000, n // 4), args.inflight)
        if fs is not None:
            results.append(fs)
        results += [single_echo, sq1]
        grown = None
        if args.growth:
            grown = await bench_growth(broker, work, n, args.inflight, *args.growth)
            results += [grown[0], grown[1]]
        soak = await bench_soak(broker, work, args.soak, args.inflight) if args.soak else []
    finally:
        broker.stop()
    print()
    print(
        f"LifeOps Mesh benchmark, {dt.date.today()}, {os.cpu_count()} cores, "
        f"{n} requests per MQTT scenario, {args.inflight} in flight"
    )
    print(table(results, base))
    print()
    if scale:
        print()
        print(scale_table(scale, base))
    print()
    print(
        f"Stats agent RSS: idle {idle:.0f} MB, peak {peak_sq:.0f} MB (SQLite), "
        f"{peak_pg:.0f} MB (PostgreSQL); LifeOps peak {peak_chain:.0f} MB"
    )
    print(
        f"Durability: synchronous=FULL (one fsync per group commit) does {sq.rate:.0f} req/s ="
        f" {sq.rate / normal.rate:.0%} of synchronous=NORMAL's {normal.rate:.0f} req/s"
    )
    if grown is not None:
        print(
            f"Growth: (2) on SQLite with {args.growth[0]:,} users and {args.growth[1]:,} stored "
            f"activities: {grown[0].rate:.0f} req/s = {grown[0].rate / grown[1].rate:.0%} of an "
            f"empty database's {grown[1].rate:.0f} req/s (best of three alternating runs each; "
            f"seeded in {grown[2]:.0f} s)"
        )
    if soak:
        rss = [m for _, m in soak]
        minute = next((m for t, m in soak if t >= 60), rss[-1])
        print(
            f"Soak: Stats (SQLite) under {args.inflight} in flight for {soak[-1][0]:.0f} s, "
            f"{(len(soak) - 1) * 2000:,} requests: RSS {rss[0]:.0f} MB at start, {minute:.0f} MB "
            f"after 1 min, {rss[-1]:.0f} MB at the end, peak {max(rss):.0f} MB, slope after the "
            f"first minute {slope_mb_per_min(soak):+.2f} MB/min"
        )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
