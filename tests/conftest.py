"""Shared fixtures: a real Mosquitto from broker/ (or the in-memory twin), clean PostgreSQL
databases, running agents.

Nothing here needs a broker or a database until a test asks for one: pure tests run anywhere.
A test that needs Mosquitto or PostgreSQL and cannot have it fails with the reason (never a
silent skip).
"""

from __future__ import annotations

import contextlib
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from lifeops_contract import contract
from lifeops_mesh import registry
from lifeops_mesh.broker import local_broker
from mesh import (
    Agent,
    AgentApp,
    MeshClient,
    Settings,
    availability_will,
    open_store,
    parse_broker_url,
)
from mesh.broker.process import MosquittoProcess
from mesh.testing.brokers import BrokerUnderTest, InMemoryBroker, as_test_broker
from mesh.testing.postgres import PostgresServer, PostgresUnavailable, postgres_server, run_sync

MOSQUITTO_TOOLS = ("mosquitto", "mosquitto_pub", "mosquitto_sub", "mosquitto_rr")


def require_mosquitto() -> None:
    for tool in MOSQUITTO_TOOLS:
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            raise pytest.UsageError(
                f"{tool} not found: install the Debian packages 'mosquitto' and "
                "'mosquitto-clients' (scripts/test.sh does this when run as root)"
            )


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoProcess]:
    """One Mosquitto for the session, started from the project's broker/ config on a free port."""
    require_mosquitto()
    proc = local_broker(tmp_path_factory.mktemp("broker"))
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[MosquittoProcess]:
    """A Mosquitto of this test's own, for tests that restart or kill it."""
    require_mosquitto()
    proc = local_broker(tmp_path / "broker")
    proc.start()
    yield proc
    proc.kill()


@pytest.fixture(params=["memory", "mosquitto"])
def mesh_broker(request: pytest.FixtureRequest) -> BrokerUnderTest:
    """The same behaviour test on the in-memory twin and on the real Mosquitto."""
    if request.param == "memory":
        return InMemoryBroker()
    return as_test_broker(request.getfixturevalue("broker"))


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    try:
        with postgres_server() as server:
            yield server
    except PostgresUnavailable as exc:
        raise pytest.UsageError(str(exc)) from exc


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test."""
    url = run_sync(pg_server.create_database())
    yield url
    run_sync(pg_server.drop_database(url))


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """The same test on SQLite and on PostgreSQL."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'agent.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def new_db(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[[], str]]:
    """Makes one more empty database of the test's backend per call (one per agent)."""
    made: list[str] = []

    def make() -> str:
        if backend == "sqlite":
            url = f"sqlite:///{tmp_path / f'db{len(made)}.db'}"
        else:
            server: PostgresServer = request.getfixturevalue("pg_server")
            url = run_sync(server.create_database())
        made.append(url)
        return url

    yield make
    if backend == "postgresql":
        server = request.getfixturevalue("pg_server")
        for url in made:
            run_sync(server.drop_database(url))


def make_settings(
    agent: str, broker: BrokerUnderTest | MosquittoProcess, db_url: str, tmp: Path, **kw: Any
) -> Settings:
    url = broker.url(agent) if isinstance(broker, MosquittoProcess) else "mqtt://memory:1"
    return Settings(
        agent=agent,
        broker=parse_broker_url(url),
        db_url=db_url,
        instance=kw.pop("instance", uuid.uuid4().hex[:8]),
        data_dir=tmp,
        session_expiry_s=kw.pop("session_expiry_s", 30),
        share_group=kw.pop("share_group", None),
        log_json=False,
        **kw,
    )


StartAgent = Callable[..., "contextlib.AbstractAsyncContextManager[Agent]"]


@pytest.fixture
def start_agent(tmp_path: Path) -> StartAgent:
    """Start an agent in this process: `async with start_agent("stats", broker, db) as agent`
    (`broker`: the session's Mosquitto, or any BrokerUnderTest such as the in-memory twin)."""

    @contextlib.asynccontextmanager
    async def start(
        name: str, broker: BrokerUnderTest | MosquittoProcess, db_url: str, **kw: Any
    ) -> AsyncIterator[Agent]:
        settings = make_settings(name, broker, db_url, tmp_path, **kw)
        app = registry.build(settings)
        transport = as_test_broker(broker).agent_transport(
            settings, name, availability_will(app.contract, name)
        )
        agent = Agent(settings, app, transport=transport, store=open_store(db_url))
        await agent.start()
        try:
            yield agent
        finally:
            await agent.stop()

    return start


StartApp = Callable[..., "contextlib.AbstractAsyncContextManager[Agent]"]


@pytest.fixture
def start_app(tmp_path: Path) -> StartApp:
    """Run an AgentApp in this process on any broker:
    `async with start_app(app, mesh_broker, db_url) as agent`."""

    @contextlib.asynccontextmanager
    async def start(
        app: AgentApp, broker: BrokerUnderTest | MosquittoProcess, db_url: str, **kw: Any
    ) -> AsyncIterator[Agent]:
        settings = make_settings(app.name, broker, db_url, tmp_path, **kw)
        transport = as_test_broker(broker).agent_transport(
            settings, app.name, availability_will(app.contract, app.name)
        )
        agent = Agent(settings, app, transport=transport, store=open_store(db_url))
        await agent.start()
        try:
            yield agent
        finally:
            await agent.stop()

    return start


@pytest.fixture
def start_stats(start_agent: StartAgent) -> StartAgent:
    """Start a Stats agent in this process: `async with start_stats(broker, db_url) as agent`."""

    def start(
        broker: BrokerUnderTest | MosquittoProcess, db_url: str, **kw: Any
    ) -> contextlib.AbstractAsyncContextManager[Agent]:
        return start_agent("stats", broker, db_url, **kw)

    return start


@pytest.fixture
async def stats(
    broker: MosquittoProcess, db_url: str, start_stats: StartAgent
) -> AsyncIterator[Agent]:
    async with start_stats(broker, db_url) as agent:
        yield agent


@pytest.fixture
async def tester(broker: MosquittoProcess) -> AsyncIterator[MeshClient]:
    """A mesh client with the `tester` account."""
    async with MeshClient(broker.url("tester"), contract()) as client:
        yield client


def user() -> str:
    """A user id of its own for each test (the session broker keeps retained state)."""
    return "u" + uuid.uuid4().hex[:12]


def to_builtins(value: Any) -> Any:
    return msgspec.to_builtins(value)


__all__ = ["StartAgent", "StartApp", "make_settings", "to_builtins", "user"]
