"""Metrics, health and their consumers: promtool and a real Prometheus server."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lifeops_contract.schemas import ActivityLogRequest
from mesh.broker.process import MosquittoProcess, free_port
from mesh.client import MeshClient
from mesh.testing.wait import eventually
from tests.conftest import user

Start = Callable[..., Any]


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise pytest.UsageError(
            f"{tool} not found: install the Debian package 'prometheus' "
            "(scripts/test.sh does this when run as root)"
        )
    return path


async def _get(url: str) -> tuple[int, bytes]:
    def go() -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    return await asyncio.to_thread(go)


async def test_metrics_follow_prometheus_conventions(
    broker: MosquittoProcess, start_agent: Start, tmp_path: Path, tester: MeshClient
) -> None:
    """/metrics has the mesh's counters, histograms and game gauges; promtool finds no problem."""
    promtool = _need("promtool")
    async with start_agent(
        "stats", broker, f"sqlite:///{tmp_path / 's.db'}", metrics_port=0
    ) as stats:
        await tester.request(
            "activities_log", ActivityLogRequest(user_id=user(), activity_type="gym_session")
        )
        await tester.request("activities_log", ActivityLogRequest(user_id="x y", activity_type="z"))
        status, body = await _get(f"http://127.0.0.1:{stats.http.port}/metrics")
    assert status == 200
    text = body.decode()
    for name in (
        'mesh_messages_received_total{key="activities_log"}',
        'mesh_messages_published_total{key="levelup"}',
        "mesh_handler_duration_seconds_bucket",
        'mesh_dead_letters_total{code="invalid_user_id"} 1.0',
        "mesh_duplicates_skipped_total",
        "mesh_outbox_pending",
        "mesh_outbox_oldest_age_seconds",
        "mesh_receipts_pending",
        "mesh_broker_connected 1.0",
        "mesh_broker_reconnects_total",
        "mesh_broker_dropped_messages",
        "stats_users 1.0",
        "stats_xp_granted 70.0",
    ):
        assert name in text, name
    check = await asyncio.to_thread(
        subprocess.run,
        [promtool, "check", "metrics"],
        input=body,
        capture_output=True,
        timeout=30,
    )
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()


async def test_health_reports_dependencies(
    broker: MosquittoProcess, new_db: Callable[[], str], start_agent: Start
) -> None:
    """LifeOps is degraded (503) while Stats is offline and healthy (200) once it is online."""
    async with start_agent("stats", broker, new_db()):
        pass  # leaves a retained stats/status = offline
    async with start_agent("lifeops", broker, new_db(), metrics_port=0) as lifeops:
        url = f"http://127.0.0.1:{lifeops.http.port}/healthz"

        async def report(code: int) -> dict[str, Any] | None:
            status, body = await _get(url)
            return json.loads(body) if status == code else None

        bad = await eventually(lambda: report(503), what="degraded")
        assert bad is not None
        assert bad["status"] == "degraded"
        assert bad["checks"]["stats"] == {"ok": False, "detail": "offline"}
        assert bad["checks"]["broker"]["ok"] and bad["checks"]["database"]["ok"]
        async with start_agent("stats", broker, new_db()):
            good = await eventually(lambda: report(200), what="healthy")
            assert good is not None
            assert good["status"] == "healthy" and good["checks"]["stats"]["ok"]
        status, _ = await _get(f"http://127.0.0.1:{lifeops.http.port}/nothing")
        assert status == 404


async def test_a_real_prometheus_scrapes_the_agents(
    broker: MosquittoProcess, start_agent: Start, tmp_path: Path
) -> None:
    """Prometheus (Debian's package) scrapes an agent; its HTTP API returns the agent's metric."""
    prometheus = _need("prometheus")
    async with start_agent(
        "stats", broker, f"sqlite:///{tmp_path / 's.db'}", metrics_port=0
    ) as stats:
        web = free_port()
        conf = tmp_path / "prometheus.yml"
        conf.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: lifeops-mesh\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{stats.http.port}']\n        labels:\n"
            "          agent: stats\n"
        )
        proc = await asyncio.create_subprocess_exec(
            prometheus,
            f"--config.file={conf}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{web}",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            query = (
                f"http://127.0.0.1:{web}/api/v1/query?query="
                "mesh_broker_connected%7Bagent%3D%22stats%22%7D"
            )

            async def value() -> float | None:
                try:
                    status, body = await _get(query)
                except OSError:
                    return None
                result = json.loads(body)["data"]["result"] if status == 200 else []
                return float(result[0]["value"][1]) if result else None

            started = time.monotonic()
            assert await eventually(value, timeout=40, interval=0.5, what="scraped") == 1.0
            assert time.monotonic() - started < 40
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 15)
