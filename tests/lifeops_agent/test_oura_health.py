"""Per-user Oura health: one household member's lapsed membership (403) is named in LifeOps'
health, `/healthz` stays 200, the HA bridge's "Oura sync" sensor of that user shows why, and
the other member keeps syncing (from a page with null contributors, a float score and a
document without `day`). The schedule loop survives database errors of a user and of a whole
cycle, and health says so if the loop ever ends."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from lifeops_agent.oura_sync import OuraSync
from lifeops_oura import env_suffix
from mesh.broker.process import MosquittoProcess
from mesh.client import MeshClient
from mesh.testing.recorder import Recorder
from mesh.testing.wait import eventually
from tests.conftest import user
from tests.support.oura_days import Scores, day, rules_xp, total_is
from tests.support.oura_standin import OuraStandIn, oura_standin

Start = Callable[..., Any]


def odd_page(api: OuraStandIn, token: str) -> dict[dt.date, list[Scores]]:
    """One page of daily_sleep: null contributors, a float score, a document without `day`;
    the versions the rules see."""
    api.put(token, "daily_sleep", day(3), 80)
    api.docs[token]["daily_sleep"][day(3)]["contributors"] = None
    api.put(token, "daily_sleep", day(2), 70)
    api.docs[token]["daily_sleep"][day(2)]["score"] = 81.6
    api.docs[token]["daily_sleep"][day(2)]["steps"] = "many"
    api.put(token, "daily_sleep", day(1), 90)
    del api.docs[token]["daily_sleep"][day(1)]["day"]
    api.put(token, "daily_readiness", day(2), 60)
    return {day(3): [(80, None, None)], day(2): [(82, 60, None)]}


def last(rec: Recorder, topic: str) -> dict[str, Any] | None:
    found = rec.on(topic)
    return json.loads(found[-1].payload) if found and found[-1].payload else None


async def _shows(rec: Recorder, topic: str, key: str, value: str) -> bool:
    payload = last(rec, topic)
    return payload is not None and payload.get(key) == value


async def test_one_user_refused_another_syncing(
    broker: MosquittoProcess,
    new_db: Callable[[], str],
    start_agent: Start,
    tester: MeshClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ok, lapsed = user(), user()
    caplog.set_level(logging.INFO, logger="lifeops_agent.oura")
    async with oura_standin(page_size=3) as api:
        versions = odd_page(api, "pat-ok")
        api.put("pat-lapsed", "daily_sleep", day(2), 50)
        api.refused["pat-lapsed"] = 403
        env = {
            "LIFEOPS_OURA_USERS": f"{ok},{lapsed}",
            f"LIFEOPS_OURA_TOKEN_{env_suffix(ok)}": "pat-ok",
            f"LIFEOPS_OURA_TOKEN_{env_suffix(lapsed)}": "pat-lapsed",
            "LIFEOPS_OURA_API_URL": api.base_url,
            "LIFEOPS_OURA_SYNC_INTERVAL_S": "1",
            "LIFEOPS_OURA_BACKFILL_DAYS": "10",
        }
        topics = [f"ha_bridge/user/{u}" for u in (ok, lapsed)]
        config = f"homeassistant/sensor/lifeops_{lapsed}/oura_sync/config"
        status_ok = f"lifeops/oura/status/{ok}"
        async with (
            Recorder(broker, [*topics, config, "lifeops/oura/status/+"]) as rec,
            start_agent("stats", broker, new_db()),
            start_agent("lifeops", broker, new_db(), env=env, metrics_port=0) as lifeops,
            start_agent("ha_bridge", broker, new_db()),
        ):
            await eventually(lambda: total_is(tester, ok, rules_xp(versions)), timeout=20,
                             what="the other days of the odd page")  # fmt: skip
            await eventually(lambda: _shows(rec, topics[1], "oura_sync", "membership"),
                             timeout=20, what="the HA state of the lapsed user")  # fmt: skip
            await eventually(lambda: _shows(rec, topics[0], "oura_sync", "ok"),
                             timeout=20, what="the HA state of the syncing user")  # fmt: skip
            async with httpx.AsyncClient() as http:
                health = await http.get(f"http://127.0.0.1:{lifeops.http.port}/healthz")
            sensor = last(rec, config)
            lapsed_state = last(rec, topics[1])
            ok_status = last(rec, status_ok)
            failures = lifeops.metrics.registry.get_sample_value(
                "lifeops_oura_sync_failures_total", {"reason": "membership", "user": lapsed}
            )
    assert health.status_code == 200, health.text
    detail = health.json()["checks"]["oura"]["detail"]
    assert f"{lapsed}: membership" in detail and "renew the membership" in detail
    assert ok not in detail
    assert sensor is not None and sensor["name"] == "Oura sync"
    assert lapsed_state is not None and "membership has expired" in lapsed_state["oura_sync_reason"]
    assert ok_status is not None and ok_status["skipped_documents"] == 1
    assert failures is not None and failures >= 1
    lines = [r for r in caplog.records if "membership" in r.getMessage()]
    assert len(lines) == 1 and lapsed in lines[0].getMessage()


async def test_the_loop_survives_database_errors_and_says_when_it_ends(
    broker: MosquittoProcess, new_db: Callable[[], str], start_agent: Start, tester: MeshClient
) -> None:
    """A user's days cannot be stored (their table is gone), then a whole cycle fails (the
    token table is gone): both counted, the user named, health ok; once the tables are back
    the next day arrives. A loop that ends for good fails the `oura` check."""
    uid = user()
    async with oura_standin() as api:
        api.put("pat", "daily_sleep", day(2), 80)
        env = {
            "LIFEOPS_OURA_USERS": uid,
            f"LIFEOPS_OURA_TOKEN_{env_suffix(uid)}": "pat",
            "LIFEOPS_OURA_API_URL": api.base_url,
            "LIFEOPS_OURA_SYNC_INTERVAL_S": "1",
            "LIFEOPS_OURA_CLIENT_ID": "id",
            "LIFEOPS_OURA_CLIENT_SECRET": "secret",
        }
        async with (
            start_agent("stats", broker, new_db()),
            start_agent("lifeops", broker, new_db(), env=env) as lifeops,
        ):
            await eventually(lambda: total_is(tester, uid, 24), timeout=20, what="first sync")
            async with lifeops.store.transaction() as tx:
                await tx.execute("ALTER TABLE lifeops_oura_days RENAME TO gone_days")
            await eventually(lambda: _detail_has(lifeops, f"{uid}: error"), timeout=20,
                             what="the user's database error in health")  # fmt: skip
            async with lifeops.store.transaction() as tx:
                await tx.execute("ALTER TABLE lifeops_oura_tokens RENAME TO gone_tokens")
            await eventually(lambda: _counted(lifeops, "lifeops_oura_sync_cycle_errors_total"),
                             timeout=20, what="a failed cycle")  # fmt: skip
            report = await lifeops.health()
            assert report.status == "healthy" and report.checks["oura"].ok
            async with lifeops.store.transaction() as tx:
                await tx.execute("ALTER TABLE gone_days RENAME TO lifeops_oura_days")
                await tx.execute("ALTER TABLE gone_tokens RENAME TO lifeops_oura_tokens")
            api.put("pat", "daily_sleep", day(1), 90)
            await eventually(lambda: total_is(tester, uid, 24 + 27), timeout=30,
                             what="the sync after the outage")  # fmt: skip
            errors = lifeops.metrics.registry.get_sample_value(
                "lifeops_oura_sync_failures_total", {"reason": "error", "user": uid}
            )
            assert errors is not None and errors >= 1

            sync = _sync_of(lifeops)
            sync._cycle = _boom  # type: ignore[method-assign]
            await eventually(lambda: _detail_has(lifeops, "loop has ended"), timeout=20,
                             what="the ended loop in health")  # fmt: skip
            report = await lifeops.health()
            assert report.status == "degraded" and not report.checks["oura"].ok


class Boom(BaseException):
    """Not an Exception: what the loop does not catch (it should never meet one)."""


async def _boom() -> bool:
    raise Boom("simulated")


def _sync_of(agent: Any) -> OuraSync:
    sync = agent.app.checks.__self__
    assert isinstance(sync, OuraSync)
    return sync


async def _detail_has(agent: Any, text: str) -> bool:
    report = await agent.health()
    return text in report.checks["oura"].detail


async def _counted(agent: Any, name: str) -> bool:
    return bool(agent.metrics.total(name) >= 1)
