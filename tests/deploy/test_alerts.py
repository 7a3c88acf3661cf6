"""The shipped alert rules (deploy/prometheus/alerts.yml): promtool checks them and runs their
test series; a real Prometheus scraping a real agent fires the dead-letter alert on the first
dead letter after a start (labelled counters exist at 0 from the start)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from mesh.broker.process import MosquittoProcess, free_port
from mesh.client import MeshClient
from mesh.testing.wait import eventually
from tests.conftest import StartAgent

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yml"


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise pytest.UsageError(f"{tool} not found: install the Debian package 'prometheus'")
    return path


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_need("promtool"), *args], capture_output=True, text=True, timeout=60, cwd=DEPLOY
    )


def test_promtool_checks_the_config_and_the_rules_and_their_tests_pass() -> None:
    check = _promtool("check", "config", "prometheus.yml")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "1 rule files found" in check.stdout, check.stdout
    test = _promtool("test", "rules", "prometheus/alerts.test.yml")
    assert test.returncode == 0, test.stdout + test.stderr
    assert "SUCCESS" in test.stdout


def test_every_alert_the_issue_names_is_shipped_and_tested() -> None:
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    names = {r["alert"] for r in rules}
    assert names >= {
        "MeshAgentDown",
        "MeshDeadLetters",
        "MeshMessagesDropped",
        "MeshRequestTimeouts",
        "MeshPublishFailures",
        "MeshBrokerDroppingMessages",
        "LifeOpsOuraSyncFailing",
        "MeshBackgroundTaskFailing",
    }
    exprs = " ".join(r["expr"] for r in rules)
    for metric in (
        "mesh_dead_letters_total",
        "mesh_messages_dropped_total",
        "mesh_request_timeouts_total",
        "mesh_publish_failures_total",
        "mesh_broker_dropped_messages",
        "lifeops_oura_sync_failures_total",
        "mesh_task_failures_total",
    ):
        assert metric in exprs, metric
    tested = (DEPLOY / "prometheus" / "alerts.test.yml").read_text()
    for name in names:
        assert f"alertname: {name}" in tested, f"{name} has no test series"


def test_compose_mounts_the_rules_where_the_config_looks() -> None:
    """deploy/prometheus.yml names the rules relative to itself; compose mounts both so the
    same relative path holds in the container."""
    conf = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    assert conf["rule_files"] == ["prometheus/alerts.yml"]
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    volumes = services["prometheus"]["volumes"]
    assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in volumes
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/prometheus/alerts.yml:ro" in volumes


async def _get(url: str) -> tuple[int, bytes]:
    def go() -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    return await asyncio.to_thread(go)


async def _api(web: int, path: str) -> Any:
    try:
        status, body = await _get(f"http://127.0.0.1:{web}/api/v1/{path}")
    except OSError:
        return None
    return json.loads(body)["data"] if status == 200 else None


async def test_a_real_prometheus_fires_the_dead_letter_alert_on_the_first_dead_letter(
    broker: MosquittoProcess, start_agent: StartAgent, tmp_path: Path, tester: MeshClient
) -> None:
    """Stats just started, Prometheus (1 s scrape and evaluation, the shipped rules) sees
    mesh_dead_letters_total{code="invalid_json"} at 0 and no alert; one payload that is not
    JSON later, MeshDeadLetters fires for that code."""
    prometheus = _need("prometheus")
    async with start_agent(
        "stats", broker, f"sqlite:///{tmp_path / 's.db'}", metrics_port=0
    ) as stats:
        assert stats.http is not None
        web = free_port()
        conf = tmp_path / "prometheus.yml"
        conf.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files: ['{RULES}']\n"
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
            query = "query?query=mesh_dead_letters_total%7Bcode%3D%22invalid_json%22%7D"

            async def zero_scraped_twice() -> bool:
                data = await _api(web, query.replace("%7D", "%7D%5B5m%5D"))
                values = data["result"][0]["values"] if data and data["result"] else []
                return len(values) >= 2 and all(float(v[1]) == 0 for v in values)

            await eventually(zero_scraped_twice, timeout=60, interval=0.5, what="0 scraped")
            alerts = await _api(web, "alerts")
            assert alerts is not None and not [
                a for a in alerts["alerts"] if a["labels"]["alertname"] == "MeshDeadLetters"
            ]
            await tester.transport.publish("stats/activities/log", b"{not json", qos=1)

            async def firing() -> list[dict[str, Any]]:
                data = await _api(web, "alerts")
                return [
                    a
                    for a in (data or {"alerts": []})["alerts"]
                    if a["labels"]["alertname"] == "MeshDeadLetters" and a["state"] == "firing"
                ]

            fired = await eventually(firing, timeout=60, interval=0.5, what="the alert firing")
            assert fired[0]["labels"]["code"] == "invalid_json"
            assert fired[0]["labels"]["agent"] == "stats"
            assert stats.metrics.total("mesh_dead_letters_total") == 1
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 15)
