"""`lifeops-mesh backup` under traffic, `restore` into a fresh directory, and private files.

Everything runs for real: `lifeops-mesh up` (Mosquitto and the three agents as the user starts
them), a client streaming requests to Stats and LifeOps while `lifeops-mesh backup` runs, then
`restore` and `up` again on the restored directory.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import tarfile
import threading
from pathlib import Path
from typing import Any

import msgspec
import pytest

from lifeops_agent.timeline import load_timeline
from lifeops_contract import contract as default_contract
from lifeops_contract.schemas import (
    ActivityLogRequest,
    CharacterGetRequest,
    TimelineCompleteRequest,
)
from lifeops_mesh.cli.store import migrations_of
from lifeops_mesh.cli.up import log_file
from lifeops_mesh.local import installation
from mesh import open_store
from mesh.broker.process import free_port
from mesh.client import MeshClient
from mesh.errors import MeshError
from mesh.testing.wait import eventually
from tests.conftest import user

ROOT = Path(__file__).resolve().parents[2]
ITEMS = load_timeline().items
XP = {i.code: sum(i.xp.values()) for i in ITEMS}
READING_XP = 30  # activities_log "reading": INT 30


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lifeops_mesh", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


class Up:
    """`lifeops-mesh up` as a user runs it, until Ctrl-C."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lifeops_mesh", "up", "--data", str(data),
             "--port", str(free_port()), "--metrics-port", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        )  # fmt: skip
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.errors: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.err_reader = threading.Thread(target=self._read_errors, daemon=True)
        self.err_reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if "mesh is up" in line:
                self.ready.set()

    def _read_errors(self) -> None:
        assert self.proc.stderr is not None
        self.errors.extend(self.proc.stderr)

    async def started(self) -> str:
        """The tester's broker URL once the mesh is up."""
        up = await asyncio.to_thread(self.ready.wait, 60)
        assert up, "".join(self.lines) + "".join(self.errors)
        return installation(self.data).broker_url("tester")

    def stop(self) -> None:
        """Ctrl-C, then wait for the exit; the pipes stay their reader threads' until their end
        (`communicate()` would read them too and close them under the threads)."""
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=30)
        for reader in (self.reader, self.err_reader):
            reader.join(timeout=10)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        assert self.proc.returncode == 0, "".join(self.errors)


def modes(root: Path) -> dict[str, str]:
    """Every file and directory under `root` (itself included) -> its mode, octal."""
    paths = [root, *root.rglob("*")]
    return {str(p.relative_to(root)): oct(stat.S_IMODE(p.stat().st_mode)) for p in paths}


def assert_private(root: Path) -> None:
    wrong = {
        p: m for p, m in modes(root).items()
        if m != ("0o700" if (root / p).is_dir() else "0o600")
    }  # fmt: skip
    assert not wrong, f"not private: {wrong}"


class Traffic:
    """Activities for Stats and completions for LifeOps (which sends them on to Stats with
    receipts); remembers what was acknowledged, in order."""

    def __init__(self, client: MeshClient, users: list[str]) -> None:
        self.client, self.users = client, users
        self.sent: list[Any] = []
        self.acked: list[Any] = []
        self.before: list[Any] = []  # acknowledged before the backup began
        self.n = 0
        self.todo = [(u, i.code) for i in ITEMS for u in users]

    def next_requests(self) -> list[Any]:
        n = self.n = self.n + 1
        uid = self.users[n % len(self.users)]
        reqs: list[Any] = [ActivityLogRequest(
            user_id=uid, activity_type="reading", source="manual", source_ref=f"{uid}-{n}"
        )]  # fmt: skip
        if n % 3 == 0 and self.todo:
            uid, code = self.todo.pop()
            reqs.append(TimelineCompleteRequest(user_id=uid, item_code=code))
        return reqs

    async def one(self, req: Any, timeout: float = 5) -> Any:
        self.sent.append(req)
        try:
            reply = await ask(self.client, req, timeout)
        except MeshError:
            return None
        if reply.success:
            self.acked.append(req)
        return reply

    async def run(self, stop: asyncio.Event, rate: float = 20) -> None:
        tasks: list[asyncio.Task[Any]] = []
        while not stop.is_set():
            tasks += [asyncio.create_task(self.one(r)) for r in self.next_requests()]
            await asyncio.sleep(1 / rate)
        await asyncio.gather(*tasks)

    def expected(self) -> dict[str, int]:
        """XP per user once every request sent has been accepted once."""
        out = {u: 0 for u in self.users}
        for r in self.sent:
            out[r.user_id] += XP[r.item_code] if isinstance(r, TimelineCompleteRequest) else 30
        return out


async def ask(client: MeshClient, req: Any, timeout: float = 5) -> Any:
    key = "timeline_complete" if isinstance(req, TimelineCompleteRequest) else "activities_log"
    return await client.request(key, req, timeout=timeout)


async def totals(client: MeshClient, users: list[str]) -> dict[str, int]:
    out = {}
    for uid in users:
        r = await client.request("character_get", CharacterGetRequest(user_id=uid), timeout=10)
        out[uid] = int(r.total_xp or 0) if r.success else 0
    return out


async def settled(client: MeshClient, users: list[str], expected: dict[str, int]) -> None:
    """Totals reach `expected` and stay there while LifeOps' receipts sweep again."""

    seen: list[dict[str, int]] = []

    async def same() -> bool:
        seen.append(await totals(client, users))
        return seen[-1] == expected

    try:
        await eventually(same, timeout=60, interval=0.5, what="the totals")
    except AssertionError as exc:
        raise AssertionError(f"totals {seen[-1]}, expected {expected}") from exc
    await asyncio.sleep(3)
    assert await totals(client, users) == expected


async def take_backup_under_traffic(
    data: Path, out: Path, users: list[str], *, stall_stats: bool
) -> Traffic:
    """History first, then a steady stream during `lifeops-mesh backup`; returns the traffic
    with `before` (acknowledged before the backup began) set on it. `stall_stats`: another
    process holds Stats' write lock from before the backup until after it, so LifeOps has
    completions waiting for their receipts in the backup."""
    mesh = Up(data)
    try:
        url = await mesh.started()
        assert_private(data)
        assert (data / "stats.db-wal").exists() and (data / "stats.db-shm").exists()
        async with MeshClient(url, default_contract()) as client:
            traffic = Traffic(client, users)
            for _ in range(6):
                for r in traffic.next_requests():
                    assert (await traffic.one(r, timeout=10)).success
            stop = asyncio.Event()
            stream = asyncio.create_task(traffic.run(stop))
            await asyncio.sleep(1.5)
            traffic.before = list(traffic.acked)
            lock = sqlite3.connect(data / "stats.db", isolation_level=None)
            if stall_stats:
                lock.execute("BEGIN IMMEDIATE")
                await asyncio.sleep(2)
            done = await asyncio.to_thread(cli, "backup", "--data", str(data), "--out", str(out))
            lock.close()  # a transaction still open is rolled back
            await asyncio.sleep(1)
            stop.set()
            await stream
            assert done.returncode == 0, done.stderr
            during = len(traffic.acked) - len(traffic.before)
            assert during > 10, f"only {during} requests during the backup"
    finally:
        mesh.stop()
    return traffic


@pytest.mark.parametrize("stall_stats", [False, True], ids=["steady", "stats-stalled"])
async def test_a_backup_under_traffic_restores_every_acknowledged_request(
    tmp_path: Path, stall_stats: bool
) -> None:
    """Requests stream to Stats (and through LifeOps' receipts to Stats) while `backup` runs.
    Restored into a fresh directory and started: every request acknowledged before the backup
    began is there (its repeat is a duplicate), LifeOps' pending receipts resume without a
    double grant, and after every request is sent again the totals are exactly one grant per
    request. With Stats stalled during the backup, LifeOps' copy has receipts pending that
    Stats' copy lacks: they are sent after the restore and granted once. The data dir, the
    archive and the restored dir are private."""
    users = [user() for _ in range(4)]
    data, out, restored = tmp_path / "data", tmp_path / "backups" / "mesh.tar", tmp_path / "new"
    (data / "broker").mkdir(mode=0o755, parents=True)  # as an earlier version left them
    data.chmod(0o755)
    for name in ("mesh.log", "broker/acl"):
        (data / name).write_text("")
        (data / name).chmod(0o644)
    traffic = await take_backup_under_traffic(data, out, users, stall_stats=stall_stats)
    assert oct(stat.S_IMODE(out.stat().st_mode)) == "0o600"
    assert sorted(os.listdir(out.parent)) == ["mesh.tar"]  # no staging left behind
    done = cli("restore", str(out), "--data", str(restored))
    assert done.returncode == 0, done.stderr
    assert_private(restored)
    pending = open_receipts(restored / "lifeops.db")
    assert pending > 0 or not stall_stats
    again = cli("restore", str(out), "--data", str(restored))
    assert again.returncode == 2 and "--overwrite" in again.stderr
    mesh = Up(restored)
    try:
        url = await mesh.started()
        busy = cli("restore", str(out), "--data", str(restored), "--overwrite")
        assert busy.returncode == 2 and "another `lifeops-mesh up` is running" in busy.stderr
        async with MeshClient(url, default_contract()) as client:
            for req in traffic.before:
                reply = await ask(client, req, timeout=10)
                if isinstance(req, TimelineCompleteRequest):
                    assert reply.error is not None and reply.error.code == "already_completed"
                else:
                    assert reply.success and reply.duplicate, msgspec.to_builtins(reply)
            for req in traffic.sent:  # everything again, until answered: each counts once
                for _ in range(10):
                    try:
                        await ask(client, req, timeout=5)
                        break
                    except MeshError:
                        await asyncio.sleep(0.2)
            await settled(client, users, traffic.expected())
        assert_private(restored)
    finally:
        mesh.stop()
    print(
        f"{len(traffic.before)} requests acknowledged before the backup, "
        f"{len(traffic.acked)} in all, {pending} LifeOps receipts pending in the backup; "
        f"totals {traffic.expected()}"
    )


def open_receipts(db: Path) -> int:
    """LifeOps' requests to Stats still waiting for their receipt in a database file."""
    conn = sqlite3.connect(db)
    try:
        row = conn.execute("SELECT COUNT(*) FROM mesh_receipts WHERE receipt_at IS NULL")
        return int(row.fetchone()[0])
    finally:
        conn.close()


def test_backup_names_what_it_leaves_out_and_restore_checks_the_archive(tmp_path: Path) -> None:
    """An agent without a database yet, or on PostgreSQL, is named (with the pg_dump recipe);
    an existing --out is never overwritten; a damaged archive is refused file by file."""
    data = tmp_path / "data"
    assert cli("broker", "passwords", "--dir", str(data / "broker")).returncode == 0
    asyncio.run(migrated(f"sqlite:///{data / 'stats.db'}"))
    out = tmp_path / "one.tar"
    done = cli("backup", "--data", str(data), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert (
        "stats: " in done.stdout and "lifeops: not in the archive: no database yet" in done.stdout
    )
    again = cli("backup", "--data", str(data), "--out", str(out))
    assert again.returncode == 2 and "exists" in again.stderr
    pg = cli(
        "backup", "--data", str(data), "--out", str(tmp_path / "pg.tar"),
        env={"LIFEOPS_DB_URL": "postgresql://stats@127.0.0.1/stats"},
    )  # fmt: skip
    assert pg.returncode == 0, pg.stderr
    assert "stats: not in the archive: its store is PostgreSQL: back it up with `pg_dump" in (
        pg.stdout
    )
    damaged = tmp_path / "damaged.tar"
    with tarfile.open(out) as src, tarfile.open(damaged, "w") as dst:
        for member in src.getmembers():
            body = src.extractfile(member).read()  # type: ignore[union-attr]
            if member.name == "databases/stats.db":
                body = body[:-1] + bytes([body[-1] ^ 1])
            dst.addfile(member, io.BytesIO(body))
    bad = cli("restore", str(damaged), "--data", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "databases/stats.db: checksum differs" in bad.stderr
    # nothing was put in place: the good archive restores there without --overwrite
    good = cli("restore", str(out), "--data", str(tmp_path / "bad"))
    assert good.returncode == 0, good.stderr
    assert (tmp_path / "bad" / "stats.db").exists()
    assert not list((tmp_path / "bad").glob(".restore-*"))
    assert_private(tmp_path / "bad")
    not_tar = cli("restore", str(data / "stats.db"), "--data", str(tmp_path / "nt"))
    assert not_tar.returncode == 2 and "not a complete lifeops-mesh backup" in not_tar.stderr


async def migrated(url: str) -> None:
    """A Stats database with its schema and nothing else."""
    async with open_store(url) as store:
        for component, steps in migrations_of("stats").items():
            await store.migrate(component, steps)


def test_the_mesh_log_rotates_by_size_and_stays_private(tmp_path: Path) -> None:
    """`up`'s log file at a small size limit: a few rotated files of bounded size, 0600."""
    old = os.umask(0o077)
    handler = log_file(tmp_path / "mesh.log", max_bytes=1000, backups=3)
    logger = logging.getLogger("test.rotation")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for n in range(200):
            logger.warning("line %d %s", n, "x" * 40)
    finally:
        logger.removeHandler(handler)
        handler.close()
        os.umask(old)
    files = modes(tmp_path)
    assert sorted(files) == [".", "mesh.log", "mesh.log.1", "mesh.log.2", "mesh.log.3"]
    assert all(m == "0o600" for p, m in files.items() if p != "."), files
    assert all((tmp_path / p).stat().st_size <= 1000 for p in files if p != ".")
    assert "line 199" in (tmp_path / "mesh.log").read_text()
