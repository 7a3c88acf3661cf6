"""`lifeops-mesh store copy`: an agent's data moved between SQLite and PostgreSQL, verified.

Stats runs on SQLite and builds a history (keyed and keyless requests); the CLI copies it to
PostgreSQL, where two Stats instances behind a shared subscription answer with the same totals
and recognise every old request; a second copy into the filled database is refused; then the
data goes back to SQLite and a Stats there does the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from lifeops_contract import contract as default_contract
from lifeops_contract.schemas import ActivityLogRequest, CharacterGetRequest
from mesh import ConfigError, Migration, Store, open_store
from mesh.broker.process import MosquittoProcess
from mesh.client import MeshClient
from mesh.store.copy import BATCH, copy_store, verify
from mesh.testing.postgres import PostgresServer
from tests.conftest import StartAgent, user

ROOT = Path(__file__).resolve().parents[2]


def copy(agent: str, source: str, target: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lifeops_mesh", "store", "copy", "--agent", agent,
         "--from", source, "--to", target],
        capture_output=True, text=True, timeout=90, cwd=ROOT, env=dict(os.environ),
    )  # fmt: skip


class History:
    """Keyed activities (source_ref) and keyless ones (known by reply topic + correlation)."""

    def __init__(self, users: list[str]) -> None:
        self.users = users
        self.keyed = [
            ActivityLogRequest(user_id=u, activity_type="reading", source_ref=f"{u}-{n}")
            for u in users for n in range(15)
        ]  # fmt: skip
        self.keyless = [
            (ActivityLogRequest(user_id=u, activity_type="reading"), f"{u}-k{n}".encode())
            for u in users for n in range(3)
        ]  # fmt: skip

    def client(self, broker: MosquittoProcess) -> MeshClient:
        # One reply topic for the whole test: a keyless request sent again from a new
        # connection is the same request.
        reply = f"reply/tester/{self.users[0]}"
        return MeshClient(broker.url("tester"), default_contract(), reply_topic=reply)

    async def send(self, client: MeshClient) -> tuple[int, int]:
        """Every request; returns (first grants, duplicates) by the replies."""
        fresh = dup = 0
        for req in self.keyed:
            reply = await client.request("activities_log", req, timeout=10)
            assert reply.success, reply.error
            fresh, dup = fresh + (not reply.duplicate), dup + reply.duplicate
        for req, corr in self.keyless:
            reply = await client.request("activities_log", req, timeout=10, correlation=corr)
            assert reply.success, reply.error
        return fresh, dup

    async def totals(self, client: MeshClient) -> dict[str, int]:
        out = {}
        for uid in self.users:
            r = await client.request("character_get", CharacterGetRequest(user_id=uid))
            out[uid] = int(r.total_xp or 0)
        return out


async def test_stats_moves_to_postgresql_and_back_with_its_history(
    broker: MosquittoProcess, pg_url: str, tmp_path: Path, start_stats: StartAgent
) -> None:
    history = History([user() for _ in range(3)])
    sqlite_url = f"sqlite:///{tmp_path / 'stats.db'}"
    async with start_stats(broker, sqlite_url), history.client(broker) as client:
        assert await history.send(client) == (len(history.keyed), 0)
        before = await history.totals(client)
    assert before == {u: 30 * (15 + 3) for u in history.users}

    moved = copy("stats", sqlite_url, pg_url)
    assert moved.returncode == 0, moved.stderr
    assert "stats_characters: 3 rows, total_xp 1620" in moved.stdout, moved.stdout
    again = copy("stats", sqlite_url, pg_url)
    assert again.returncode == 2 and "is not empty" in again.stderr, again.stderr

    async with contextlib.AsyncExitStack() as stack:
        agents = [
            await stack.enter_async_context(start_stats(broker, pg_url, share_group="stats"))
            for _ in range(2)
        ]
        client = await stack.enter_async_context(history.client(broker))
        assert await history.totals(client) == before
        assert await history.send(client) == (0, len(history.keyed))  # all known already
        assert await history.totals(client) == before
        handled = [a.metrics.total("mesh_messages_received_total") for a in agents]
        skipped = sum(a.metrics.total("mesh_duplicates_skipped_total") for a in agents)
    assert all(h > 0 for h in handled), f"work was not shared: {handled}"
    assert skipped >= len(history.keyless), skipped  # keyless: known by the copied inbox

    back_url = f"sqlite:///{tmp_path / 'back' / 'stats.db'}"
    back = copy("stats", pg_url, back_url)
    assert back.returncode == 0, back.stderr
    async with start_stats(broker, back_url) as stats, history.client(broker) as client:
        assert await history.totals(client) == before
        assert await history.send(client) == (0, len(history.keyed))
        assert await history.totals(client) == before
        assert stats.metrics.total("mesh_duplicates_skipped_total") >= len(history.keyless)
    for f in (tmp_path / "back").iterdir():
        assert oct(stat.S_IMODE(f.stat().st_mode)) == "0o600", f


SERIAL = {
    "demo": [
        Migration(
            1,
            (
                "CREATE TABLE demo_items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)",
                "CREATE TABLE demo_events (id INTEGER PRIMARY KEY, body TEXT NOT NULL)",
            ),
            postgresql=(
                "CREATE TABLE demo_items (id SERIAL PRIMARY KEY, name TEXT NOT NULL)",
                "CREATE TABLE demo_events ("
                " id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, body TEXT NOT NULL)",
            ),
        )
    ]
}


async def test_a_serial_column_continues_after_the_copied_rows(tmp_path: Path, pg_url: str) -> None:
    """A third-party agent's SERIAL key and GENERATED ALWAYS identity on PostgreSQL: the copied
    ids are kept and the sequences moved past them, so the next insert gets a new id instead of
    colliding with a copied one. More rows than one batch, both ways."""
    n = BATCH * 2 + 500
    async with open_store(f"sqlite:///{tmp_path / 'demo.db'}") as source:
        await source.migrate("demo", SERIAL["demo"])
        async with source.transaction() as tx:
            await tx.executemany(
                "INSERT INTO demo_items (id, name) VALUES (?, ?)",
                [(i, f"n{i}") for i in range(1, n + 1)],
            )
            await tx.execute("INSERT INTO demo_events (id, body) VALUES (41, 'e')")
        async with open_store(pg_url) as target:
            reports = await copy_store(source, target, SERIAL)
            total = n * (n + 1) // 2
            assert [(r.table, r.rows, r.sums) for r in reports] == [
                ("demo_items", n, {"id": total}),
                ("demo_events", 1, {"id": 41}),
            ]
            await changed_text_is_caught(source, target, n)
            async with target.transaction() as tx:
                row = await tx.fetchone("INSERT INTO demo_items (name) VALUES ('x') RETURNING id")
                event = await tx.fetchone(
                    "INSERT INTO demo_events (body) VALUES ('f') RETURNING id"
                )
            assert (row, event) == ((n + 1,), (42,))
            async with open_store(f"sqlite:///{tmp_path / 'back.db'}") as back:
                reports = await copy_store(target, back, SERIAL)
    assert [(r.rows, r.sums) for r in reports] == [
        (n + 1, {"id": total + n + 1}),
        (2, {"id": 41 + 42}),
    ]


async def changed_text_is_caught(source: Store, target: Store, n: int) -> None:
    """One text value changed in the copy (same counts, same sums): the digest differs."""
    async with target.transaction() as tx:
        await tx.execute("UPDATE demo_items SET name = 'changed' WHERE id = 1")
    with pytest.raises(ConfigError, match="the copy differs from the source"):
        await verify(source, target, ["demo_items"], {"demo_items": (n, 0)})
    async with target.transaction() as tx:
        await tx.execute("UPDATE demo_items SET name = 'n1' WHERE id = 1")


def readme_pg_recipe() -> list[str]:
    """The commands of docs/operations.md's PostgreSQL backup recipe (continuation lines
    joined)."""
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.split("## Backup, restore, move", 1)[1]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match, "no sh block under 'Backup, restore, move'"
    return [c.strip() for c in match.group(1).replace("\\\n", " ").splitlines() if c.strip()]


async def test_the_readme_pg_dump_recipe_restores_stats(
    broker: MosquittoProcess, pg_url: str, pg_server: PostgresServer, tmp_path: Path,
    start_stats: StartAgent,
) -> None:  # fmt: skip
    """docs/operations.md's pg_dump / pg_restore commands, run as written (URLs replaced; the test's
    server creates the empty database): Stats on the restored database has the same totals and
    knows every old request."""
    history = History([user() for _ in range(2)])
    async with start_stats(broker, pg_url), history.client(broker) as client:
        await history.send(client)
        before = await history.totals(client)
    restored = await pg_server.create_database()
    try:
        commands = [c for c in readme_pg_recipe() if "stats" in c and not c.startswith("createdb")]
        assert [c.split()[0] for c in commands] == ["pg_dump", "pg_restore"], commands
        for command in commands:
            command = command.replace("postgresql://stats@db-host/stats_restored", restored)
            command = command.replace("postgresql://stats@db-host/stats", pg_url)
            done = await asyncio.to_thread(
                subprocess.run, command, shell=True, cwd=tmp_path, capture_output=True,
                text=True, timeout=60,
            )  # fmt: skip
            assert done.returncode == 0, f"{command}: {done.stderr}"
        async with start_stats(broker, restored), history.client(broker) as client:
            assert await history.totals(client) == before
            assert await history.send(client) == (0, len(history.keyed))
            assert await history.totals(client) == before
    finally:
        await pg_server.drop_database(restored)
