"""LifeOps' scheduled Oura sync: each user's daily scores from the Oura API v2.

Every `interval_s` (and once at start) each user is synced: those in LIFEOPS_OURA_USERS and
those who logged in (`lifeops-mesh oura login`, tokens in LifeOps' store), from a few days
before their last stored day (`overlap_days`: Oura completes and revises recent days) up to
tomorrow, or `backfill_days` back for a user with no day yet. The days go through the same path
as `lifeops/oura/import` (`oura_days.keep_days`: each day once, a changed day as its next
revision, each with a receipt), committed in LifeOps' store, then sent to Stats.

Tokens: a user's OAuth tokens (refreshed before they expire and on a 401, see
lifeops_oura.token_store), else a personal access token from a file or the environment
(lifeops_oura.tokens).

Per user: a failure is counted in `lifeops_oura_sync_failures_total{reason,user}`, kept as the
user's status (retained on `lifeops/oura/status/<user>`, in the `oura` health check's detail
and in `lifeops-mesh oura status`) and logged once per change of state; the agent stays healthy.
A user who must log in again costs no request until they have. Any exception of a user or of a
whole cycle is caught, counted and retried with jittered bounded backoff; the health check
fails only if the loop itself ends. Tokens are only ever in the Authorization header and the
store.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Mapping

import msgspec

from lifeops_agent import repository
from lifeops_agent.oura_days import MAX_OURA_DAYS, keep_days
from lifeops_agent.oura_status import UserStatuses
from lifeops_contract.ids import check_user_id, distinct_user_ids
from lifeops_contract.schemas import OuraDay, OuraImportReply, OuraSynced
from lifeops_oura import (
    DEFAULT_BASE_URL,
    OuraClient,
    OuraError,
    Token,
    token_for,
    token_sources,
)
from lifeops_oura.api import Renew
from lifeops_oura.oauth import OAuthConfig, OuraLoginNeeded
from lifeops_oura.token_store import OAuthTokens
from mesh import Agent, Backoff, Check, ConfigError, HandlerError, ReceiptRecord

log = logging.getLogger("lifeops_agent.oura")


class LifeOpsRefused(OuraError):
    """LifeOps' own refusal of a synced user's days (e.g. `user_id_taken`: another spelling
    of the user is stored), counted and shown in health like the API's failures."""


class OuraSyncConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """LIFEOPS_OURA_USERS (comma-separated user ids), LIFEOPS_OURA_API_URL,
    LIFEOPS_OURA_SYNC_INTERVAL_S, LIFEOPS_OURA_BACKFILL_DAYS, LIFEOPS_OURA_OVERLAP_DAYS,
    LIFEOPS_OURA_TIMEOUT_S, LIFEOPS_OURA_REFRESH_MARGIN_S (refresh an access token this long
    before it expires). Tokens: lifeops_oura.tokens and lifeops_oura.oauth."""

    users: tuple[str, ...] = ()
    base_url: str = DEFAULT_BASE_URL
    interval_s: float = 3600.0
    backfill_days: int = 30
    overlap_days: int = 7  # recent days fetched again: Oura completes and revises them
    timeout_s: float = 15.0
    refresh_margin_s: float = 300.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> OuraSyncConfig:
        users = tuple(u.strip() for u in env.get("LIFEOPS_OURA_USERS", "").split(",") if u.strip())
        raw = {
            "users": users,
            "base_url": env.get("LIFEOPS_OURA_API_URL"),
            "interval_s": env.get("LIFEOPS_OURA_SYNC_INTERVAL_S"),
            "backfill_days": env.get("LIFEOPS_OURA_BACKFILL_DAYS"),
            "overlap_days": env.get("LIFEOPS_OURA_OVERLAP_DAYS"),
            "timeout_s": env.get("LIFEOPS_OURA_TIMEOUT_S"),
            "refresh_margin_s": env.get("LIFEOPS_OURA_REFRESH_MARGIN_S"),
        }
        try:
            config = msgspec.convert(
                {k: v for k, v in raw.items() if v is not None}, cls, strict=False
            )
        except msgspec.ValidationError as exc:
            raise ConfigError(f"Oura sync settings (LIFEOPS_OURA_*): {exc}") from exc
        for user in config.users:
            try:
                check_user_id(user)
            except HandlerError as exc:
                raise ConfigError(f"LIFEOPS_OURA_USERS: {exc.message}") from exc
        # run-club and run_club would read one token variable: one person's sleep to another.
        distinct_user_ids(config.users, "LIFEOPS_OURA_USERS")
        if config.interval_s < 1 or config.backfill_days < 1 or config.overlap_days < 0:
            raise ConfigError(
                "LIFEOPS_OURA_SYNC_INTERVAL_S >= 1, LIFEOPS_OURA_BACKFILL_DAYS >= 1 and "
                "LIFEOPS_OURA_OVERLAP_DAYS >= 0"
            )
        return config


def tokens_for(
    config: OuraSyncConfig, env: Mapping[str, str], *, oauth: bool = False
) -> dict[str, Token]:
    """The personal access tokens of the configured users. Without OAuth (no
    LIFEOPS_OURA_CLIENT_ID) a user without one stops the agent at startup; with it, that user
    is reported as needing `lifeops-mesh oura login` until they have."""
    out: dict[str, Token] = {}
    for user in config.users:
        token = token_for(user, env)
        if token is not None:
            out[user] = token
        elif not oauth:
            raise ConfigError(
                f"LIFEOPS_OURA_USERS names {user!r}, but it has no token: set "
                + token_sources(user)
                + f", or set LIFEOPS_OURA_CLIENT_ID and LIFEOPS_OURA_CLIENT_SECRET and run "
                f"`lifeops-mesh oura login --user {user}`"
            )
    return out


class OuraSync:
    def __init__(
        self,
        config: OuraSyncConfig,
        tokens: dict[str, Token],
        oauth: OAuthConfig | None = None,
    ) -> None:
        self.config = config
        self._tokens = tokens
        self._oauth_config = oauth
        self.oauth: OAuthTokens | None = None
        self.statuses = UserStatuses()
        self.loop_ended: str | None = None  # why the loop ended (it should not)
        self._agent: Agent | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.config.users) or self._oauth_config is not None

    async def start(self, agent: Agent) -> None:
        self._agent = agent
        if self._oauth_config is not None:
            self.oauth = OAuthTokens(
                agent.store, self._oauth_config, margin_s=self.config.refresh_margin_s
            )
        if self.enabled:
            agent.metrics.counter(
                "lifeops_oura_sync_cycle_errors_total",
                "Oura sync cycles that failed as a whole (e.g. the database was away)",
            )  # at 0 from the start: an alert sees the first one as an increase
            self._task = asyncio.create_task(self._loop(), name="lifeops-oura-sync")
            self._task.add_done_callback(self._ended)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.remove_done_callback(self._ended)
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, 5)

    def _ended(self, task: asyncio.Task[None]) -> None:
        exc = None if task.cancelled() else task.exception()
        self.loop_ended = f"{type(exc).__name__}: {exc}" if exc else "stopped"
        log.error("the Oura sync loop has ended (%s): no user is synced", self.loop_ended)

    def checks(self) -> dict[str, Check]:
        """`oura`: fails only when the sync loop has ended; each failing user is named in the
        detail (one user's lapsed membership does not make LifeOps unhealthy)."""
        if not self.enabled:
            return {}
        if self.loop_ended is not None:
            return {
                "oura": Check(
                    ok=False,
                    detail=f"the Oura sync loop has ended ({self.loop_ended}): restart LifeOps",
                )
            }
        n = len(self.statuses.by_user)
        detail = f"{n} users synced every {self.config.interval_s:g} s"
        failing = self.statuses.failing()
        if failing:
            users = "; ".join(f"{s.user_id}: {s.state} ({s.reason})" for s in failing)
            detail = f"{detail}; needs attention: {users}"
        return {"oura": Check(ok=True, detail=detail)}

    async def _loop(self) -> None:
        """Cycles forever: a failing user or cycle is counted and retried with jittered,
        bounded backoff (at most `interval_s`); only cancellation ends it."""
        backoff = Backoff(base=min(5.0, self.config.interval_s), cap=self.config.interval_s)
        agent = self._require_agent()
        while True:
            try:
                retry_soon = await self._cycle()
            except Exception as exc:
                agent.metrics.counter(
                    "lifeops_oura_sync_cycle_errors_total",
                    "Oura sync cycles that failed as a whole (e.g. the database was away)",
                ).inc()
                log.warning("Oura sync cycle failed: %s: %s", type(exc).__name__, exc)
                retry_soon = True
            if retry_soon:
                delay = backoff.next_delay()
            else:
                backoff.reset()
                delay = self.config.interval_s
            await asyncio.sleep(delay)

    async def _cycle(self) -> bool:
        """Every user once; True when one failed in a way worth retrying soon."""
        users = list(self.config.users)
        if self.oauth is not None:
            users += [u for u in await self.oauth.users() if u not in users]
        for user in [u for u in self.statuses.by_user if u not in users]:
            await self.statuses.gone(self._require_agent(), user)
        retry_soon = False
        for user in users:
            try:
                await self.sync_user(user)
            except Exception:
                retry_soon |= self.statuses.by_user[user].state in ("unavailable", "error")
        return retry_soon

    async def _token(self, user_id: str) -> tuple[Token, str, Renew | None]:
        """The user's access token, its kind, and how to renew it after a 401."""
        oauth = self.oauth
        if oauth is not None:
            token = await oauth.access(user_id)
            if token is not None:

                async def renew(stale: Token) -> Token | None:
                    return await oauth.renew(user_id, stale)

                return token, "oauth", renew
        pat = self._tokens.get(user_id)
        if pat is not None:
            return pat, "personal", None
        raise OuraLoginNeeded(user_id, "no Oura tokens (never logged in, or logged out)")

    async def sync_user(self, user_id: str, since: dt.date | None = None) -> OuraImportReply:
        """One user's days from the API into the store and on to Stats. Raises what failed
        (an OuraError, or e.g. a database error) after recording it as the user's status."""
        agent = self._require_agent()
        kind = "oauth" if self.oauth is not None else "none"
        try:
            start, end = await self._range(agent, user_id, since)
            token, kind, renew = await self._token(user_id)
            async with OuraClient(
                token,
                base_url=self.config.base_url,
                timeout_s=self.config.timeout_s,
                renew=renew,
            ) as oura:
                days = await oura.days(start, end)
                skipped = oura.skipped
            totals = await self._keep_all(agent, user_id, days)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self.statuses.failed(agent, user_id, exc, kind)
            raise
        await self.statuses.succeeded(agent, user_id, kind, skipped)
        if totals.imported or totals.revised:
            log.info(
                "Oura sync of %s from %s: %d new days, %d revised",
                user_id, start, totals.imported, totals.revised,
            )  # fmt: skip
        return totals

    async def _keep_all(self, agent: Agent, user_id: str, days: list[OuraDay]) -> OuraImportReply:
        totals = OuraImportReply()
        for at in range(0, len(days), MAX_OURA_DAYS):
            try:
                part = await self._keep(agent, user_id, days[at : at + MAX_OURA_DAYS])
            except HandlerError as exc:  # e.g. user_id_taken: another spelling holds the user
                refused = LifeOpsRefused(f"LifeOps refused the days: {exc}")
                refused.reason = exc.code
                raise refused from exc
            totals = OuraImportReply(
                imported=totals.imported + part.imported,
                skipped=totals.skipped + part.skipped,
                revised=totals.revised + part.revised,
            )
        return totals

    def _require_agent(self) -> Agent:
        if self._agent is None:
            raise RuntimeError("the Oura sync has not started")
        return self._agent

    async def _range(
        self, agent: Agent, user_id: str, since: dt.date | None
    ) -> tuple[dt.date, dt.date]:
        today = dt.datetime.now(dt.UTC).date()
        if since is None:
            async with agent.store.read() as tx:
                last = await repository.last_oura_day(tx, user_id)
            since = (
                last - dt.timedelta(days=self.config.overlap_days)
                if last is not None
                else today - dt.timedelta(days=self.config.backfill_days)
            )
        return since, today + dt.timedelta(days=1)  # tomorrow: users east of UTC

    async def _keep(self, agent: Agent, user_id: str, days: list[OuraDay]) -> OuraImportReply:
        staged: list[ReceiptRecord] = []
        async with agent.store.transaction() as tx:

            async def send(event: OuraSynced, record_id: str) -> None:
                staged.append(
                    await agent.receipts.stage(
                        tx, "oura_synced", event, record_id=record_id, trace_id=None
                    )
                )

            reply = await keep_days(tx, user_id, days, dt.datetime.now(dt.UTC), send)
        agent.receipts.submit(staged)  # after the commit, as the group committer does
        return reply
