"""LifeOps syncs Oura days from the API itself: a stand-in of the Oura API v2 over real HTTP
(pages, 429 with Retry-After, 5xx, a day revised between syncs, then 401), a real Stats
through the real broker; the XP equals what the rules give, exactly once."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import pytest

from lifeops_contract.schemas import UserSettingsRequest
from mesh import ConfigError, codec
from mesh.broker.process import MosquittoProcess
from mesh.client import MeshClient
from mesh.testing.wait import eventually
from tests.conftest import user
from tests.support.oura_days import Scores, character_sheet, day, rules_xp, total_is
from tests.support.oura_standin import OuraStandIn, oura_standin

Start = Callable[..., Any]
SECRET = "PAT-never-shown-9f3a1c"


def serve(
    api: OuraStandIn, scores: dict[dt.date, tuple[int | None, int | None, int | None]]
) -> None:
    for d, (sleep, readiness, activity) in scores.items():
        for endpoint, score in zip(
            ("daily_sleep", "daily_readiness", "daily_activity"),
            (sleep, readiness, activity),
            strict=True,
        ):
            if score is not None:
                api.put(SECRET, endpoint, d, score)


async def test_scheduled_sync_grants_the_rules_xp_once_through_faults_and_revisions(
    broker: MosquittoProcess,
    new_db: Callable[[], str],
    start_agent: Start,
    tester: MeshClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """First sync through a 429 (Retry-After: 1) and a 503, 2 documents a page: the five days'
    XP. Oura then completes today's partial day and revises two scores (one up, one down): the
    next sync adds only what the better versions give. More syncs add nothing; a revoked token
    is named in health (which stays healthy: one user's refusal is not LifeOps'), counts
    `auth` failures, logs one line, never shows the token."""
    uid = user()
    first: dict[dt.date, Scores] = {
        day(4): (82, 78, 70),
        day(3): (74, 66, 55),
        day(2): (90, 88, 61),
        day(1): (65, 71, 80),
        day(0): (77, 69, None),  # today: no activity score yet
    }
    env = {
        "LIFEOPS_OURA_USERS": uid,
        f"LIFEOPS_OURA_TOKEN_{uid.upper()}": SECRET,
        "LIFEOPS_OURA_SYNC_INTERVAL_S": "1",
        "LIFEOPS_OURA_BACKFILL_DAYS": "10",
    }
    caplog.set_level(logging.INFO, logger="lifeops_agent.oura")
    async with oura_standin(page_size=2) as api:
        serve(api, first)
        api.fail("daily_sleep", 429, {"Retry-After": "1"})
        api.fail("daily_readiness", 503)
        env["LIFEOPS_OURA_API_URL"] = api.base_url
        async with (
            start_agent("stats", broker, new_db()),
            start_agent("lifeops", broker, new_db(), env=env) as lifeops,
        ):
            versions: dict[dt.date, list[Scores]] = {d: [s] for d, s in first.items()}
            await eventually(
                lambda: total_is(tester, uid, rules_xp(versions)), timeout=20, what="first sync"
            )
            sleep_seen = [s for s in api.seen if s.endpoint == "daily_sleep"]
            assert [s.status for s in sleep_seen[:2]] == [429, 200]
            assert sleep_seen[1].at - sleep_seen[0].at >= 1.0  # Retry-After honoured
            assert any(s.params.get("next_token") for s in sleep_seen)  # pages followed

            revised: dict[dt.date, Scores] = {
                day(0): (77, 69, 64),
                day(3): (80, 66, 55),
                day(4): (60, 78, 70),
            }
            serve(api, revised)
            for d, s in revised.items():
                versions[d].append(s)
            expected = rules_xp(versions)
            await eventually(
                lambda: total_is(tester, uid, expected), timeout=20, what="revised days"
            )
            syncs = len(api.seen)
            await eventually(lambda: _more(api, syncs + 6), timeout=10, what="two more syncs")
            sheet = await character_sheet(tester, uid)
            assert sheet.character is not None and sheet.character.activities == 5
            assert sheet.total_xp == expected

            api.docs.clear()  # the token is revoked: every request is answered 401
            await eventually(lambda: _named(lifeops, uid), timeout=10, what="user named in health")
            refused_at = len(api.seen)  # each sync now stops at its first request
            await eventually(lambda: _more(api, refused_at + 3), timeout=10, what="more syncs")
            report = await lifeops.health()
            assert report.status == "healthy" and report.checks["oura"].ok
            assert f"{uid}: refused" in report.checks["oura"].detail
            assert lifeops.metrics.total("lifeops_oura_sync_failures_total") >= 2
            assert (await character_sheet(tester, uid)).total_xp == expected
    refused = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 1 and refused[0].levelno == logging.ERROR
    assert SECRET not in caplog.text and SECRET not in codec.encode(report).decode()


async def _more(api: OuraStandIn, n: int) -> bool:
    return len(api.seen) >= n


async def _named(agent: Any, uid: str) -> bool:
    report = await agent.health()
    return f"{uid}: refused" in report.checks["oura"].detail


async def _cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lifeops_mesh",
        "oura",
        "sync",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **env},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_sync_once_then_again_then_with_a_refused_token(
    broker: MosquittoProcess, new_db: Callable[[], str], start_agent: Start, tester: MeshClient
) -> None:
    """`lifeops-mesh oura sync --user ID --since DATE`: fetches through pages and a 503, sends
    the days through `oura_import` (XP by the rules); again: nothing new; a wrong token: exit
    2 with a clear message that does not show the token."""
    uid = user()
    scores: dict[dt.date, Scores] = {
        day(3): (82, 78, 70),
        day(2): (74, 66, 55),
        day(1): (90, 88, None),
    }
    env = {f"LIFEOPS_OURA_TOKEN_{uid.upper()}": SECRET}
    async with oura_standin(page_size=2) as api:
        serve(api, scores)
        serve(api, {day(9): (99, 99, 99)})  # before --since: not fetched
        api.fail("daily_activity", 503)
        args = ["--user", uid, "--since", day(3).isoformat(), "--broker", broker.url("tester")]
        args += ["--api-url", api.base_url]
        async with start_agent("stats", broker, new_db()), start_agent("lifeops", broker, new_db()):
            code, out, err = await _cli(*args, env=env)
            assert code == 0, err
            assert f"3 days for {uid}: 3 new, 0 already imported" in out
            expected = rules_xp({d: [s] for d, s in scores.items()})
            await eventually(lambda: total_is(tester, uid, expected), what="XP of the CLI sync")
            code, out, err = await _cli(*args, env=env)
            assert code == 0 and "0 new, 3 already imported" in out, err
            bad = f"{SECRET}-revoked"
            code, out, err = await _cli(*args, env={f"LIFEOPS_OURA_TOKEN_{uid.upper()}": bad})
            assert code == 2 and "token is refused (401)" in err
            assert bad not in out + err
            assert await total_is(tester, uid, expected)


@pytest.mark.parametrize(
    ("users", "both"),
    [
        ("run-club,run_club", ("run_club", "run-club")),
        ("ada,Run-Club,run_club", ("run_club", "Run-Club")),
        ("Alice, alice", ("alice", "Alice")),
    ],
)
def test_two_spellings_of_one_user_are_refused_at_startup(
    users: str, both: tuple[str, str]
) -> None:
    """run-club, run_club and Run-Club would all read LIFEOPS_OURA_TOKEN_RUN_CLUB: one
    person's sleep credited to another. The configuration naming two of them is refused, the
    error names both, and LifeOps is not built."""
    from lifeops_agent.oura_sync import OuraSyncConfig
    from lifeops_mesh.tools.doctor.static import build_apps
    from lifeops_oura import env_suffix

    env = {"LIFEOPS_OURA_USERS": users, "LIFEOPS_OURA_TOKEN_RUN_CLUB": SECRET}
    with pytest.raises(ConfigError, match="LIFEOPS_OURA_USERS") as got:
        OuraSyncConfig.from_env(env)
    assert all(repr(uid) in str(got.value) for uid in both), got.value
    assert SECRET not in str(got.value)
    _, failed = build_apps(env)  # what `up` and `doctor` build LifeOps with
    assert "one user id spelled two ways" in str(failed["lifeops"])
    assert env_suffix("run-club") == env_suffix("Run_Club") == "RUN_CLUB"
    assert OuraSyncConfig.from_env({"LIFEOPS_OURA_USERS": "run-club,ada"}).users == (
        "run-club",
        "ada",
    )


def test_sync_settings_are_checked_at_startup_and_never_show_the_token() -> None:
    """A user without a token, a bad interval or user id: ConfigError naming the variables;
    `doctor` builds LifeOps with a token configured and nothing it reports shows it."""
    from lifeops_agent.oura_sync import OuraSyncConfig, tokens_for
    from lifeops_mesh.tools.doctor.static import build_apps

    config = OuraSyncConfig.from_env({"LIFEOPS_OURA_USERS": "ada, run-club"})
    assert config.users == ("ada", "run-club") and config.overlap_days == 7
    with pytest.raises(ConfigError, match="LIFEOPS_OURA_TOKEN_RUN_CLUB"):
        tokens_for(config, {"LIFEOPS_OURA_TOKEN_ADA": SECRET})
    with pytest.raises(ConfigError, match="LIFEOPS_OURA"):
        OuraSyncConfig.from_env({"LIFEOPS_OURA_SYNC_INTERVAL_S": "soon"})
    with pytest.raises(ConfigError, match="LIFEOPS_OURA_USERS"):
        OuraSyncConfig.from_env({"LIFEOPS_OURA_USERS": "a/b"})
    env = {"LIFEOPS_OURA_USERS": "ada", "LIFEOPS_OURA_TOKEN_ADA": SECRET}
    apps, failed = build_apps(env)
    assert "lifeops" in apps and not failed
    checks = apps["lifeops"].checks
    assert checks is not None and SECRET not in repr(checks())
    bad = {"LIFEOPS_OURA_USERS": "ada", "LIFEOPS_OURA_TOKEN_ADA": f"{SECRET} x"}
    _, failed = build_apps(bad)
    assert "lifeops" in failed and SECRET not in str(failed["lifeops"])


async def test_a_sync_user_spelled_as_another_stored_user_is_refused_and_the_sync_lives(
    broker: MosquittoProcess,
    new_db: Callable[[], str],
    start_agent: Start,
    tester: MeshClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """LifeOps already stores `<u>-run-club`; LIFEOPS_OURA_USERS names `<u>_Run_Club` (the
    same person's id spelled differently): its days are refused (nothing stored or granted),
    health says why, the log names both ids, and later cycles keep running."""
    base = user()
    stored, synced = f"{base}-run-club", f"{base}_Run_Club"
    env = {
        "LIFEOPS_OURA_USERS": synced,
        f"LIFEOPS_OURA_TOKEN_{synced.upper()}": SECRET,
        "LIFEOPS_OURA_SYNC_INTERVAL_S": "1",
    }
    async with oura_standin() as api:
        serve(api, {day(1): (82, 78, 70)})
        env["LIFEOPS_OURA_API_URL"] = api.base_url
        db = new_db()
        async with start_agent("lifeops", broker, db):  # no sync yet: `stored` comes first
            done = await tester.request(
                "user_settings", UserSettingsRequest(user_id=stored, timezone="UTC")
            )
            assert done.error is None
        async with (
            start_agent("stats", broker, new_db()),
            start_agent("lifeops", broker, db, env=env) as lifeops,
        ):

            async def refused_twice() -> bool:
                assert lifeops.app.checks is not None
                detail = lifeops.app.checks()["oura"].detail
                seen = [s for s in api.seen if s.endpoint == "daily_sleep"]
                return "user_id_taken" in detail and len(seen) >= 2

            await eventually(refused_twice, timeout=20, what="two refused sync cycles")
            assert lifeops.app.checks is not None
            assert f"{synced}: user_id_taken" in lifeops.app.checks()["oura"].detail
            said = [r.getMessage() for r in caplog.records if "refused the days" in r.getMessage()]
            assert said and repr(stored) in said[0] and repr(synced) in said[0]
            assert all(SECRET not in r.getMessage() for r in caplog.records)
            async with lifeops.store.read() as tx:
                rows = await tx.fetchall("SELECT user_id FROM lifeops_oura_days")
            assert rows == []
            reply = await character_sheet(tester, synced)
            assert not reply.success  # no character: nothing granted
