"""The Oura API v2 client against the local stand-in over real HTTP: pages, retries with
Retry-After honoured, 5xx retried within a bound, 401 as a typed error, the token kept secret."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest

from lifeops_contract.schemas import OuraScores
from lifeops_oura import OuraAuthError, OuraClient, OuraUnavailable, Token, token_for
from lifeops_oura.api import retry_after_s
from mesh import Backoff, ConfigError
from tests.support.oura_standin import OuraStandIn, oura_standin

D0 = dt.date(2026, 11, 20)
SECRET = "PAT-s3cret-0123456789"


def _fill(api: OuraStandIn, days: int = 5) -> None:
    for i in range(days):
        day = D0 + dt.timedelta(days=i)
        api.put(SECRET, "daily_sleep", day, 70 + i)
        api.put(SECRET, "daily_readiness", day, 60 + i)
        if i < days - 1:  # the last day has no activity score yet (a partial day)
            api.put(SECRET, "daily_activity", day, 80 + i)


def _client(
    api: OuraStandIn, token: str = SECRET, *, attempts: int = 5, max_wait_s: float = 120.0
) -> OuraClient:
    return OuraClient(
        Token(token),
        base_url=api.base_url,
        backoff=Backoff(base=0.01, cap=0.05),
        attempts=attempts,
        max_wait_s=max_wait_s,
    )


async def test_days_follow_next_token_pages_and_merge_per_day() -> None:
    """5 days at 2 documents a page: 3 pages per endpoint (2 for activity's 4), merged per
    day; the Bearer token goes in the header, the date range in the query."""
    async with oura_standin(page_size=2) as api:
        _fill(api)
        pages: list[tuple[str, int]] = []
        async with _client(api) as oura:
            days = await oura.days(
                D0, D0 + dt.timedelta(days=4), on_page=lambda k, n: pages.append((k, n))
            )
    assert [d.date for d in days] == [D0 + dt.timedelta(days=i) for i in range(5)]
    assert days[0].scores == OuraScores(sleep=70, readiness=60, activity=80)
    assert days[4].scores == OuraScores(sleep=74, readiness=64, activity=None)
    assert [k for k, _ in pages] == ["sleep"] * 3 + ["readiness"] * 3 + ["activity"] * 2
    assert {s.authorization for s in api.seen} == {f"Bearer {SECRET}"}
    assert [s.params.get("next_token") for s in api.seen[:3]] == [None, "2", "4"]
    assert api.seen[0].params["start_date"] == "2026-11-20"


async def test_429_waits_at_least_retry_after_then_succeeds() -> None:
    """Two 429s with Retry-After: 1: the client waits at least a second each time."""
    async with oura_standin() as api:
        _fill(api, 2)
        api.fail("daily_sleep", 429, {"Retry-After": "1"}, times=2)
        async with _client(api) as oura:
            days = await oura.days(D0, D0 + dt.timedelta(days=1))
    assert len(days) == 2
    sleep = [s for s in api.seen if s.endpoint == "daily_sleep"]
    assert [s.status for s in sleep] == [429, 429, 200]
    assert sleep[1].at - sleep[0].at >= 1.0 and sleep[2].at - sleep[1].at >= 1.0


async def test_retry_after_beyond_the_wait_bound_is_raised_not_waited() -> None:
    """A Retry-After of an hour is not slept through: OuraUnavailable carries it."""
    async with oura_standin() as api:
        _fill(api, 1)
        api.fail("daily_sleep", 429, {"Retry-After": "3600"})
        started = time.monotonic()
        async with _client(api, max_wait_s=5.0) as oura:
            with pytest.raises(OuraUnavailable) as err:
                await oura.days(D0, D0)
    assert err.value.reason == "rate_limited" and err.value.retry_after == 3600
    assert time.monotonic() - started < 2


async def test_5xx_is_retried_within_the_bound() -> None:
    """Two 503s then 200: retried; 503 forever: OuraUnavailable after exactly `attempts`."""
    async with oura_standin() as api:
        _fill(api, 1)
        api.fail("daily_readiness", 503, times=2)
        async with _client(api, attempts=3) as oura:
            assert len(await oura.days(D0, D0)) == 1
        api.fail("daily_readiness", 502, times=100)
        api.seen.clear()
        async with _client(api, attempts=3) as oura:
            with pytest.raises(OuraUnavailable) as err:
                await oura.days(D0, D0)
    assert err.value.reason == "server_error"
    assert [s.status for s in api.seen if s.endpoint == "daily_readiness"] == [502, 502, 502]


async def test_401_is_an_auth_error_at_once_and_the_token_is_never_shown() -> None:
    """A wrong token: one request, OuraAuthError(401), no retry; nothing prints the token."""
    async with oura_standin() as api:
        _fill(api, 1)
        async with _client(api, token="wrong-token") as oura:
            with pytest.raises(OuraAuthError) as err:
                await oura.days(D0, D0)
    assert err.value.status == 401 and len(api.seen) == 1
    token = Token(SECRET)
    assert SECRET not in repr(token) and SECRET not in str(token) and SECRET not in str(err.value)


def test_tokens_from_a_file_or_the_environment(tmp_path: Path) -> None:
    """The file wins over the variable; a user without either has none; an unreadable file
    is a ConfigError that names the variable, not the token."""
    path = tmp_path / "alice.token"
    path.write_text(SECRET + "\n")
    env = {"LIFEOPS_OURA_TOKEN_FILE_RUN_CLUB": str(path), "LIFEOPS_OURA_TOKEN_RUN_CLUB": "other"}
    assert token_for("run-club", env) == Token(SECRET)
    assert token_for("bob", {"LIFEOPS_OURA_TOKEN_BOB": "x1"}) == Token("x1")
    assert token_for("carol", env) is None
    with pytest.raises(ConfigError, match="LIFEOPS_OURA_TOKEN_FILE_DAN"):
        token_for("dan", {"LIFEOPS_OURA_TOKEN_FILE_DAN": str(path) + ".missing"})
    # a secrets directory with a file per user (compose.yaml mounts ./secrets/oura there)
    secrets = tmp_path / "oura"
    secrets.mkdir()
    (secrets / "erin").write_text("e-token\n")
    in_dir = {"LIFEOPS_OURA_TOKEN_DIR": str(secrets)}
    assert token_for("erin", in_dir) == Token("e-token")
    assert token_for("frank", in_dir) is None
    assert token_for("erin", {**in_dir, "LIFEOPS_OURA_TOKEN_ERIN": "x2"}) == Token("x2")


def test_retry_after_reads_seconds_and_http_dates() -> None:
    """Retry-After: delta-seconds or an HTTP date; garbage is no hint."""
    now = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
    assert retry_after_s("7") == 7.0
    assert retry_after_s("Tue, 01 Dec 2026 12:00:30 GMT", now) == 30.0
    assert retry_after_s("soon") is None and retry_after_s(None) is None
