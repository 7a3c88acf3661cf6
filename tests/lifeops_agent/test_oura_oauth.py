"""Oura OAuth2 for real: the stand-in's authorization and token endpoints over HTTP (single-use
refresh tokens, short-lived access tokens, 401 for an expired one), `lifeops-mesh oura login`
as a process (the browser step is an HTTP client following the redirect, or the redirect URL
pasted on stdin), LifeOps syncing through many refreshes on both backends with the XP exact,
two instances refreshing the same user at once, a crash between a refresh and its commit, and
the user who must log in again."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from mesh.broker.process import MosquittoProcess, free_port
from mesh.client import MeshClient
from mesh.testing.processes import AgentProcess
from mesh.testing.wait import eventually
from tests.conftest import user
from tests.support.oura_days import Scores, day, put, rules_xp, total_is
from tests.support.oura_login import login, oauth_env, oura_cli
from tests.support.oura_standin import OuraStandIn, oura_standin

Start = Callable[..., Any]


def xp(days: dict[dt.date, Scores]) -> int:
    return rules_xp({d: [s] for d, s in days.items()})


def secrets_of(api: OuraStandIn) -> list[str]:
    """Every token the stand-in ever issued, and the client secret."""
    grants = list(api.oauth.access.values())
    tokens = list(api.oauth.access) + [g.refresh for g in grants] + list(api.oauth.used_refresh)
    return [*tokens, api.oauth.client_secret]


async def test_login_then_a_week_of_syncs_across_many_refreshes(
    broker: MosquittoProcess,
    new_db: Callable[[], str],
    start_agent: Start,
    tester: MeshClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A user logs in through the CLI (listener); then a day a cycle for a week, the access
    token living 1 s: first refreshed before it expires, then (its expiry misreported) on the
    API's 401 with the request sent again. XP exact; no invalid_grant; no token anywhere."""
    uid, account = user(), f"acct-{user()}"
    caplog.set_level(logging.INFO, logger="lifeops_agent.oura")
    async with oura_standin(page_size=2) as api:
        api.oauth.login_as = account
        api.oauth.access_lifetime_s = 1.0
        env = oauth_env(api, free_port())
        week: dict[dt.date, Scores] = {day(6): (82, 78, 70)}
        put(api, account, day(6), week[day(6)])
        db = new_db()
        async with (
            start_agent("stats", broker, new_db()),
            start_agent("lifeops", broker, db, env=env) as lifeops,
        ):
            out = await login(uid, db, env)
            first = xp(week)
            await eventually(lambda: total_is(tester, uid, first), timeout=20, what="first sync")
            for n in range(5, -1, -1):
                if n == 3:
                    api.oauth.advertised_expires_in = 3600  # the agent believes it: 401s come
                week[day(n)] = (60 + n, 70 + n, 80 + n)
                put(api, account, day(n), week[day(n)])
                expected = xp(week)
                await eventually(
                    functools.partial(total_is, tester, uid, expected), timeout=20, what=f"day {n}"
                )
            report = await lifeops.health()
            code, status = await oura_cli("status", "--db", db, env=env)
            gone, said = await oura_cli("logout", "--user", uid, "--db", db, env=env)
            await eventually(lambda: _detail_has(lifeops, "0 users"), timeout=10,
                             what="the logged-out user no longer synced")  # fmt: skip
            after = len(api.seen)
            await asyncio.sleep(1.5)
            assert len(api.seen) == after  # nothing more asked for this user
    expired = sum(s.status == 401 for s in api.seen)
    print(f"week: {api.oauth.refreshes} refreshes, {expired} 401s answered by a refresh and retry")
    assert gone == 0 and f"{uid}: Oura tokens revoked at Oura and forgotten" in said, said
    assert api.oauth.revoked == 1
    assert api.oauth.refreshes >= 6 and api.oauth.invalid_grants == 0
    assert any(s.status == 401 for s in api.seen if s.endpoint.startswith("daily_"))
    oura = report.checks["oura"]
    assert oura.ok and "needs attention" not in oura.detail, oura.detail
    assert code == 0 and uid in status and "oauth" in status, status
    shown = caplog.text + out + status + said + repr(report)
    assert not [s for s in secrets_of(api) if s in shown]


async def test_two_instances_refresh_the_same_user_without_invalid_grant(
    broker: MosquittoProcess, new_db: Callable[[], str], start_agent: Start, tester: MeshClient
) -> None:
    """Two LifeOps instances on one store sync the same user every second; each access token
    lives 1 s and every refresh takes 0.3 s at Oura, so both reach for the same refresh token
    at once, over and over: the row lock makes one refresh and the other use its result."""
    uid, account = user(), f"acct-{user()}"
    async with oura_standin(page_size=3) as api:
        api.oauth.login_as = account
        api.oauth.access_lifetime_s = 1.0
        api.oauth.token_delay_s = 0.3
        env = oauth_env(api, free_port())
        days: dict[dt.date, Scores] = {day(4): (82, 78, 70)}
        put(api, account, day(4), days[day(4)])
        db = new_db()
        async with (
            start_agent("stats", broker, new_db()),
            start_agent("lifeops", broker, db, env=env) as one,
            start_agent("lifeops", broker, db, env=env) as two,
        ):
            await login(uid, db, env, paste=True)
            for n in (3, 2, 1, 0):
                days[day(n)] = (70 + n, 60 + n, 50 + n)
                put(api, account, day(n), days[day(n)])
                expected = xp(days)
                await eventually(
                    functools.partial(total_is, tester, uid, expected), timeout=20, what=f"day {n}"
                )
            await asyncio.sleep(2)  # more racing refreshes
            assert await total_is(tester, uid, expected)
            states = [a.app.checks()["oura"] for a in (one, two) if a.app.checks is not None]
    print(f"two instances: {api.oauth.refreshes} refreshes, {api.oauth.invalid_grants} refused")
    assert api.oauth.refreshes >= 4 and api.oauth.invalid_grants == 0
    assert len(states) == 2 and all(c.ok and "needs attention" not in c.detail for c in states)


async def test_a_crash_right_after_a_refresh_then_a_new_login(
    broker: MosquittoProcess,
    new_db: Callable[[], str],
    start_agent: Start,
    tester: MeshClient,
    tmp_path: Path,
) -> None:
    """LifeOps (a real process) is killed once Oura has rotated its tokens and before it has
    the new pair. Restarted, its refresh token is dead: one invalid_grant, one line naming the
    user and the command, no more token requests while it waits; /healthz stays 200 with the
    user named. After `oura login` the sync goes on; every day's XP counted once."""
    uid, account = user(), f"acct-{user()}"
    async with oura_standin(page_size=3) as api:
        api.oauth.login_as = account
        api.oauth.access_lifetime_s = 2.0
        port = free_port()
        env = oauth_env(api, free_port())
        days: dict[dt.date, Scores] = {day(3): (82, 78, 70)}
        put(api, account, day(3), days[day(3)])
        db = new_db()
        proc = AgentProcess(
            "lifeops", broker.url("lifeops"), db, cli=[sys.executable, "-m", "lifeops_mesh"],
            data_dir=tmp_path, env=env, extra_args=["--metrics-port", str(port)],
        )  # fmt: skip
        async with start_agent("stats", broker, new_db()):
            await asyncio.to_thread(proc.start)
            try:
                await login(uid, db, env)
                first = xp(days)
                await eventually(lambda: total_is(tester, uid, first), timeout=20, what="first")
                victim = proc.proc
                assert victim is not None
                rotated = api.oauth.refreshes
                api.oauth.crash_after_refresh = lambda: proc.signal(signal.SIGKILL)
                await eventually(lambda: _async(victim.poll() is not None), timeout=20,
                                 what="killed during a refresh")  # fmt: skip
                assert api.oauth.refreshes == rotated + 1 and api.oauth.invalid_grants == 0
                # Restarted as another instance: the killed one's broker session, resumed, would
                # not deliver Stats' retained status again (runtime behaviour, not Oura's).
                proc.args[proc.args.index("p0")] = "p1"
                await asyncio.to_thread(proc.start)
                await eventually(lambda: _async(_login_lines(proc, uid) == 1), timeout=20,
                                 what="the log-in-again line")  # fmt: skip
                asked = len([s for s in api.seen if s.endpoint == "/oauth/token"])
                await asyncio.sleep(3)  # three cycles: nothing sent for this user
                health = await _healthz(port)
                assert api.oauth.invalid_grants == 1 and _login_lines(proc, uid) == 1
                assert len([s for s in api.seen if s.endpoint == "/oauth/token"]) == asked
                assert health.status_code == 200, health.text
                assert f"{uid}: login_needed" in health.text

                await login(uid, db, env)
                days[day(1)] = (90, 91, 92)
                put(api, account, day(1), days[day(1)])
                expected = xp(days)
                await eventually(lambda: total_is(tester, uid, expected), timeout=20,
                                 what="the sync after the new login")  # fmt: skip
            finally:
                proc.stop()
    assert not [s for s in secrets_of(api) if s in "".join(proc.lines)]


async def _healthz(port: int) -> httpx.Response:
    """/healthz once LifeOps has seen Stats' status (a restarted process needs a moment)."""
    async with httpx.AsyncClient() as http:
        for _ in range(100):
            health = await http.get(f"http://127.0.0.1:{port}/healthz")
            if '"stats":{"ok":true' in health.text:
                break
            await asyncio.sleep(0.2)
    return health


async def _detail_has(agent: Any, text: str) -> bool:
    report = await agent.health()
    return text in report.checks["oura"].detail


def _login_lines(proc: AgentProcess, uid: str) -> int:
    return sum(f"lifeops-mesh oura login --user {uid}" in ln for ln in proc.lines)


async def _async(value: Any) -> Any:
    return value
