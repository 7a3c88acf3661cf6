"""`lifeops-mesh integration-test` (compose's test-runner) and tools reading their broker
password from LIFEOPS_CREDENTIALS_FILE, against a real Mosquitto and agents."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from lifeops_contract import contract
from lifeops_mesh.broker import local_broker
from lifeops_mesh.local import with_credentials
from mesh import ConfigError
from mesh.broker.accounts import credentials_text
from mesh.broker.process import MosquittoProcess

ROOT = Path(__file__).resolve().parents[2]
Start = Callable[..., Any]


@pytest.fixture
def own(tmp_path: Path) -> Any:
    broker = local_broker(tmp_path / "broker")
    broker.start()
    yield broker
    broker.stop()


def tool_env(broker: MosquittoProcess, tmp_path: Path) -> dict[str, str]:
    """What compose's cli/test-runner services get: a URL without user or password, and one
    credentials file per account (tester, doctor)."""
    files = []
    for account in ("tester", "doctor"):
        f = tmp_path / account / "credentials.toml"
        f.parent.mkdir(exist_ok=True)
        f.write_text(credentials_text({account: broker.credentials[account]}))
        files.append(str(f))
    return {
        **os.environ,
        "LIFEOPS_TOOL_BROKER_URL": f"mqtt://127.0.0.1:{broker.port}",
        "LIFEOPS_CREDENTIALS_FILE": os.pathsep.join(files),
    }


async def cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lifeops_mesh", *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 100)
    return proc.returncode or 0, out.decode(), err.decode()


@pytest.fixture
async def agents(own: MosquittoProcess, tmp_path: Path, start_agent: Start) -> AsyncIterator[None]:
    async with (
        start_agent("stats", own, f"sqlite:///{tmp_path / 's.db'}"),
        start_agent("lifeops", own, f"sqlite:///{tmp_path / 'l.db'}"),
    ):
        yield


async def test_integration_test_passes_on_a_healthy_mesh(
    own: MosquittoProcess, agents: None, tmp_path: Path
) -> None:
    """Every request key of the contract answered, a completion reaching Stats, a clean live
    review: exit 0; the passwords came from the credentials files, not a command line."""
    rc, out, err = await cli(tool_env(own, tmp_path), "integration-test", "--watch", "3s", "--json")
    report = json.loads(out)
    assert rc == 0, (out, err)
    names = {c["name"] for c in report["checks"] if c["ok"]}
    requests = {k for k, e in contract().topics.items() if e.kind == "request"}
    assert {f"round trip {k}" for k in requests} | {
        "a completion reaches Stats",
        "doctor's live review",
    } == names
    rc, out, err = await cli(tool_env(own, tmp_path), "health")
    assert rc == 0 and "stats" in out, (out, err)


async def test_integration_test_fails_without_stats(
    own: MosquittoProcess, tmp_path: Path, start_agent: Start
) -> None:
    """With Stats away, the completion does not reach it and Stats' requests go unanswered:
    exit 1, each failure named."""
    async with start_agent("lifeops", own, f"sqlite:///{tmp_path / 'l.db'}"):
        rc, out, err = await cli(
            tool_env(own, tmp_path), "integration-test", "--watch", "2s", "--json"
        )
    report = json.loads(out)
    assert rc == 1, (out, err)
    failed = {c["name"] for c in report["checks"] if not c["ok"]}
    assert {"a completion reaches Stats", "round trip activities_log"} <= failed, report
    assert "round trip timeline_get" not in failed, report


def test_with_credentials_fills_user_and_password(tmp_path: Path) -> None:
    """A URL without a password takes it from the files (the tool's account when the URL names
    no user); a URL with one is used as given; an account in no file is a clear error."""
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text(credentials_text({"tester": "t/1"}))
    b.write_text(credentials_text({"doctor": "d2"}))
    files = f"{a}{os.pathsep}{b}"
    assert with_credentials("mqtt://h:1884", "tester", files) == "mqtt://tester:t%2F1@h:1884"
    assert with_credentials("mqtt://h:1884", "doctor", files) == "mqtt://doctor:d2@h:1884"
    assert with_credentials("mqtt://doctor@h", "tester", files) == "mqtt://doctor:d2@h"
    assert with_credentials("mqtt://x:y@h", "tester", files) == "mqtt://x:y@h"
    assert with_credentials("mqtt://h", "tester", None) == "mqtt://h"
    with pytest.raises(ConfigError, match="no password for broker user 'stats'"):
        with_credentials("mqtt://stats@h", "tester", files)
