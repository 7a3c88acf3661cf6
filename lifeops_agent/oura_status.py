"""Each user's Oura sync status: what failed in words, counted, logged once per change, kept in
the store (`lifeops-mesh oura status`) and retained on `lifeops/oura/status/<user>` (the Home
Assistant bridge's per-user "Oura sync" sensor). Never a token."""

from __future__ import annotations

import datetime as dt
import logging

from lifeops_contract.schemas import OuraSyncState, OuraSyncStatus
from lifeops_oura import OuraAuthError, OuraError, OuraResponseError, OuraUnavailable
from lifeops_oura.oauth import OAuthError, OuraLoginNeeded
from lifeops_oura.token_store import record_sync
from mesh import Agent, codec, state

log = logging.getLogger("lifeops_agent.oura")

TokenKind = str  # "oauth" | "personal" | "none"
RETRY_SOON: frozenset[OuraSyncState] = frozenset({"unavailable", "bad_response", "error"})


def classify(exc: BaseException, user_id: str, kind: TokenKind) -> tuple[OuraSyncState, str, str]:
    """(state, what it means and what to do, metric reason) of a failed sync."""
    if isinstance(exc, OuraLoginNeeded):
        return "login_needed", str(exc), exc.reason
    if isinstance(exc, OuraAuthError) and exc.status == 403:
        return "membership", str(exc), exc.reason
    if isinstance(exc, OuraAuthError):
        fix = (
            "Oura no longer issues personal access tokens: set up OAuth and run "
            f"`lifeops-mesh oura login --user {user_id}`"
            if kind == "personal"
            else f"refused after a refresh too: run `lifeops-mesh oura login --user {user_id}`"
        )
        return "refused", f"{exc}; {fix}", exc.reason
    if isinstance(exc, OuraUnavailable):
        return "unavailable", f"{exc} (retried)", exc.reason
    if isinstance(exc, OuraResponseError):
        return "bad_response", str(exc), exc.reason
    if isinstance(exc, OAuthError):
        return "error", f"{exc} (check LIFEOPS_OURA_CLIENT_ID, _SECRET, _TOKEN_URL)", exc.reason
    if isinstance(exc, OuraError) and exc.reason == "user_id_taken":  # LifeOps' own refusal
        return "user_id_taken", str(exc), exc.reason
    if isinstance(exc, OuraError):
        return "error", str(exc), exc.reason
    return "error", f"{type(exc).__name__}: {str(exc)[:200]}", "error"


class UserStatuses:
    def __init__(self) -> None:
        self.by_user: dict[str, OuraSyncStatus] = {}

    def failing(self) -> list[OuraSyncStatus]:
        return [s for _, s in sorted(self.by_user.items()) if s.state != "ok"]

    async def failed(
        self, agent: Agent, user_id: str, exc: BaseException, kind: TokenKind
    ) -> OuraSyncState:
        what, reason, label = classify(exc, user_id, kind)
        agent.metrics.counter(
            "lifeops_oura_sync_failures_total",
            "Oura API syncs that failed, by reason and user",
            "reason",
            "user",
        ).labels(label, user_id).inc()
        before = self.by_user.get(user_id)
        if before is None or before.state != what:  # one line per change, not one per cycle
            if what in RETRY_SOON:
                log.warning("Oura sync of %s failed: %s", user_id, reason)
            elif isinstance(exc, OuraLoginNeeded):
                log.error("%s", reason)
            else:
                log.error("Oura sync of %s: %s", user_id, reason)
        else:
            log.debug("Oura sync of %s failed again: %s", user_id, reason)
        last = before.last_sync_at if before is not None else None
        await self._set(agent, user_id, what, reason, kind, last, 0)
        return what

    async def gone(self, agent: Agent, user_id: str) -> None:
        """A user no longer synced (logged out and not in LIFEOPS_OURA_USERS): their retained
        status says so once, and they leave health."""
        log.info("Oura sync of %s: logged out, no longer synced", user_id)
        reason = f"logged out: lifeops-mesh oura login --user {user_id} to sync again"
        await self._set(agent, user_id, "login_needed", reason, "none", None, 0)
        self.by_user.pop(user_id, None)

    async def succeeded(self, agent: Agent, user_id: str, kind: TokenKind, skipped: int) -> None:
        before = self.by_user.get(user_id)
        if before is not None and before.state != "ok":
            log.info("Oura sync of %s works again", user_id)
        reason = f"{skipped} documents without a day skipped" if skipped else ""
        now = dt.datetime.now(dt.UTC)
        await self._set(agent, user_id, "ok", reason, kind, now, skipped)

    async def _set(
        self,
        agent: Agent,
        user_id: str,
        what: OuraSyncState,
        reason: str,
        kind: TokenKind,
        last: dt.datetime | None,
        skipped: int,
    ) -> None:
        status = OuraSyncStatus(
            user_id=user_id,
            state=what,
            reason=reason,
            token="oauth" if kind == "oauth" else "personal" if kind == "personal" else "none",
            last_sync_at=last,
            skipped_documents=skipped,
            checked_at=dt.datetime.now(dt.UTC),
        )
        self.by_user[user_id] = status
        try:
            async with agent.store.transaction() as tx:
                await record_sync(tx, user_id, None if what == "ok" else f"{what}: {reason}")
                await state.put(
                    tx,
                    topic=agent.contract.topic("oura_status", user_id=user_id),
                    topic_key="oura_status",
                    payload=codec.encode(status),
                    trace_id=None,
                )
        except Exception as exc:  # the status is in health either way
            log.warning("Oura sync status of %s not stored: %s", user_id, exc)
            return
        agent.states.changed()
