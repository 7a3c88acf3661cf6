"""A PostgreSQL server for the tests: the one at LIFEOPS_TEST_PG_URL (default: the local server on
127.0.0.1:5432), or a throwaway cluster started from Debian's postgresql binaries."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg

from mesh.errors import ConfigError


class PostgresUnavailable(ConfigError):
    """No PostgreSQL to test against, and none could be started."""


DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
INSTALL_HINT = (
    "PostgreSQL is needed for the PostgreSQL half of the suite: start a server and set "
    "LIFEOPS_TEST_PG_URL=postgresql://user@host:port/db (a role that may CREATE DATABASE), or "
    "install the Debian package 'postgresql' so the tests can start their own "
    "(scripts/test.sh does this when run as root)"
)


class PostgresServer:
    def __init__(
        self,
        admin_url: str,
        *,
        bindir: Path | None = None,
        data_dir: Path | None = None,
        as_user: list[str] | None = None,
        options: str = "",
    ) -> None:
        self.admin_url = admin_url
        # Set for a private cluster, so a caller can stop and start it (outage tests).
        self.bindir = bindir
        self.data_dir = data_dir
        self.as_user = as_user or []
        self.options = options

    def url_for(self, dbname: str) -> str:
        base, _, _ = self.admin_url.rpartition("/")
        return f"{base}/{dbname}"

    def stop(self) -> None:
        """Stop a private cluster (an outage); `start()` brings it back."""
        self._pg_ctl("-m", "fast", "-w", "stop")

    def start(self) -> None:
        assert self.data_dir is not None
        self._pg_ctl("-l", str(self.data_dir.parent / "log"), "-o", self.options, "-w", "start")

    def _pg_ctl(self, *args: str) -> None:
        if self.bindir is None or self.data_dir is None:
            raise PostgresUnavailable("only a private cluster can be stopped and started")
        subprocess.run(
            [*self.as_user, str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), *args],
            capture_output=True,
            timeout=60,
            check=True,
        )

    async def create_database(self, tablespace: str | None = None) -> str:
        name = "lifeops_test_" + uuid.uuid4().hex[:12]
        conn = await asyncpg.connect(self.admin_url, timeout=10)
        try:
            where = f' TABLESPACE "{tablespace}"' if tablespace else ""
            await conn.execute(f'CREATE DATABASE "{name}"{where}')
        finally:
            await conn.close()
        return self.url_for(name)

    async def drop_database(self, url: str) -> None:
        name = url.rpartition("/")[2]
        conn = await asyncpg.connect(self.admin_url, timeout=10)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


def run_sync(coro: Any) -> Any:
    """Run a coroutine to completion from sync code, even while another event loop runs."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result(timeout=60)


def _reachable(url: str) -> bool:
    async def probe() -> None:
        conn = await asyncpg.connect(url, timeout=3)
        await conn.close()

    # Fixtures may be set up while pytest-asyncio's loop runs: probe on a thread of its own.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        try:
            pool.submit(asyncio.run, probe()).result(timeout=10)
            return True
        except Exception:
            return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def private_cluster() -> Iterator[PostgresServer]:
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins:
        raise PostgresUnavailable(INSTALL_HINT)
    bindir = Path(bins[-1]).parent
    tmp = Path(tempfile.mkdtemp(prefix="lifeops-pg-"))
    port = _free_port()
    as_user: list[str] = []
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(tmp, "postgres", "postgres")
    data = tmp / "data"
    options = f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1"
    subprocess.run(
        [*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    subprocess.run(
        [
            *as_user,
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(tmp / "log"),
            "-o",
            options,
            "-w",
            "start",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    try:
        url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        deadline = time.monotonic() + 30
        while not _reachable(url):
            if time.monotonic() > deadline:
                raise PostgresUnavailable(f"private PostgreSQL did not start: see {tmp / 'log'}")
            time.sleep(0.2)
        yield PostgresServer(url, bindir=bindir, data_dir=data, as_user=as_user, options=options)
    finally:
        subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    url = os.environ.get("LIFEOPS_TEST_PG_URL", DEFAULT_ADMIN_URL)
    if _reachable(url):
        yield PostgresServer(url)
        return
    if "LIFEOPS_TEST_PG_URL" in os.environ:
        raise PostgresUnavailable(f"LIFEOPS_TEST_PG_URL={url} is not reachable. " + INSTALL_HINT)
    with private_cluster() as server:
        yield server
