"""LifeOps' scheduled Oura sync: each configured user's daily scores from the Oura API v2.

Every `interval_s` (and once at start) each user in LIFEOPS_OURA_USERS is synced from a few
days before their last stored day (`overlap_days`: Oura completes and revises recent days) up
to tomorrow, or `backfill_days` back for a user with no day yet. The days go through the same
path as `lifeops/oura/import` (`oura_days.keep_days`: each day once, a changed day as its next
revision, each with a receipt), committed in LifeOps' store, then sent to Stats.

Failures are counted in `lifeops_oura_sync_failures_total{reason}`; a refused token (401/403)
makes the `oura` health check fail and is logged once, until a sync of that user succeeds.
The token is only ever in the Authorization header.
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
from lifeops_contract.ids import check_user_id, distinct_user_ids
from lifeops_contract.schemas import OuraDay, OuraImportReply, OuraSynced
from lifeops_oura import (
    DEFAULT_BASE_URL,
    OuraAuthError,
    OuraClient,
    OuraError,
    Token,
    token_for,
    token_sources,
)
from mesh import Agent, Check, ConfigError, HandlerError, ReceiptRecord

log = logging.getLogger("lifeops_agent.oura")


class LifeOpsRefused(OuraError):
    """LifeOps' own refusal of a synced user's days (e.g. `user_id_taken`: another spelling
    of the user is stored), counted and shown in health like the API's failures."""


class OuraSyncConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """LIFEOPS_OURA_USERS (comma-separated user ids), LIFEOPS_OURA_API_URL,
    LIFEOPS_OURA_SYNC_INTERVAL_S, LIFEOPS_OURA_BACKFILL_DAYS, LIFEOPS_OURA_OVERLAP_DAYS,
    LIFEOPS_OURA_TIMEOUT_S. Tokens: see lifeops_oura.tokens."""

    users: tuple[str, ...] = ()
    base_url: str = DEFAULT_BASE_URL
    interval_s: float = 3600.0
    backfill_days: int = 30
    overlap_days: int = 7  # recent days fetched again: Oura completes and revises them
    timeout_s: float = 15.0

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


def tokens_for(config: OuraSyncConfig, env: Mapping[str, str]) -> dict[str, Token]:
    """Every configured user's token; a user without one stops the agent at startup."""
    out: dict[str, Token] = {}
    for user in config.users:
        token = token_for(user, env)
        if token is None:
            raise ConfigError(
                f"LIFEOPS_OURA_USERS names {user!r}, but it has no token: set "
                + token_sources(user)
            )
        out[user] = token
    return out


class OuraSync:
    def __init__(self, config: OuraSyncConfig, tokens: dict[str, Token]) -> None:
        self.config = config
        self._tokens = tokens
        self.auth_failed: dict[str, int] = {}  # user -> HTTP status of the refusal
        self.last_error: dict[str, str] = {}  # user -> reason of the last failed sync
        self._agent: Agent | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    async def start(self, agent: Agent) -> None:
        self._agent = agent
        if self.enabled:
            self._task = asyncio.create_task(self._loop(), name="lifeops-oura-sync")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self._task, 5)
            self._task = None

    def checks(self) -> dict[str, Check]:
        """`oura`: fails while a user's token is refused (the token is never named)."""
        if not self.enabled:
            return {}
        if self.auth_failed:
            users = ", ".join(f"{u} ({s})" for u, s in sorted(self.auth_failed.items()))
            return {"oura": Check(ok=False, detail=f"Oura API refused the token of {users}")}
        trouble = ", ".join(f"{u}: {r}" for u, r in sorted(self.last_error.items()))
        detail = f"{len(self._tokens)} users synced every {self.config.interval_s:g} s"
        if trouble:
            detail = f"{detail}; last failures: {trouble}"
        return {"oura": Check(ok=True, detail=detail)}

    async def _loop(self) -> None:
        while True:
            for user in self._tokens:
                with contextlib.suppress(OuraError):
                    await self.sync_user(user)
            await asyncio.sleep(self.config.interval_s)

    async def sync_user(self, user_id: str, since: dt.date | None = None) -> OuraImportReply:
        """One user's days from the API into the store and on to Stats (raises OuraError)."""
        agent = self._require_agent()
        start, end = await self._range(agent, user_id, since)
        try:
            async with OuraClient(
                self._tokens[user_id],
                base_url=self.config.base_url,
                timeout_s=self.config.timeout_s,
            ) as oura:
                days = await oura.days(start, end)
        except OuraError as exc:
            self._failed(agent, user_id, exc)
            raise
        totals = OuraImportReply()
        for at in range(0, len(days), MAX_OURA_DAYS):
            try:
                part = await self._keep(agent, user_id, days[at : at + MAX_OURA_DAYS])
            except HandlerError as exc:  # e.g. user_id_taken: another spelling holds the user
                refused = LifeOpsRefused(f"LifeOps refused the days: {exc}")
                refused.reason = exc.code
                self._failed(agent, user_id, refused)
                raise refused from exc
            totals = OuraImportReply(
                imported=totals.imported + part.imported,
                skipped=totals.skipped + part.skipped,
                revised=totals.revised + part.revised,
            )
        if self.auth_failed.pop(user_id, None) is not None:
            log.info("Oura sync of %s works again", user_id)
        self.last_error.pop(user_id, None)
        if totals.imported or totals.revised:
            log.info(
                "Oura sync of %s from %s: %d new days, %d revised",
                user_id, start, totals.imported, totals.revised,
            )  # fmt: skip
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

    def _failed(self, agent: Agent, user_id: str, exc: OuraError) -> None:
        agent.metrics.counter(
            "lifeops_oura_sync_failures_total", "Oura API syncs that failed, by reason", "reason"
        ).labels(exc.reason).inc()
        self.last_error[user_id] = exc.reason
        if isinstance(exc, OuraAuthError):
            if user_id not in self.auth_failed:  # one line, not one per cycle
                log.error("Oura sync of %s: %s; fix its token and restart", user_id, exc)
            self.auth_failed[user_id] = exc.status
        else:
            log.warning("Oura sync of %s failed: %s", user_id, exc)
