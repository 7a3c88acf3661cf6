"""An async client of the Oura Cloud API v2 daily endpoints, on httpx.

`GET {base}/v2/usercollection/daily_{sleep,readiness,activity}?start_date=&end_date=&next_token=`
with `Authorization: Bearer <access token>` (OAuth2, or a personal access token), every
`next_token` page followed.

Errors (each has a `reason`, the label of the sync-failure metric)::

    OuraError
     ├── OuraAuthError       401: the token is wrong, expired or revoked (after one refresh
     │                       and retry when the client can refresh); 403: Oura's reference
     │                       says the user's Oura membership has usually expired
     ├── OuraLoginNeeded     (lifeops_oura.oauth) the refresh token is refused: log in again
     ├── OuraUnavailable     429, 5xx or no connection, still so after the bounded retries
     └── OuraResponseError   another 4xx, or a body that is not the documented shape

Retries: 5xx, 429 and transport errors, at most `attempts` tries, delays from the runtime's
`Backoff` (exponential, full jitter, capped); a 429's `Retry-After` is honoured (the delay is
at least that long), and one longer than `max_wait_s` is not waited out here: it is raised as
OuraUnavailable with `retry_after` for the caller's schedule.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType

import httpx
import msgspec

from lifeops_contract.schemas import OuraDay
from lifeops_oura.documents import ENDPOINTS, KINDS, Doc, Page, merge
from lifeops_oura.tokens import Token
from mesh import Backoff

log = logging.getLogger("lifeops_oura.api")

DEFAULT_BASE_URL = "https://api.ouraring.com"
MAX_PAGES = 1000  # per endpoint and sync: a server that never stops paging is an error


class OuraError(Exception):
    reason = "error"


class OuraAuthError(OuraError):
    """401: the token is refused. 403: Oura's API reference says this usually means the user's
    Oura membership has expired (renew the membership; the token is fine)."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.reason = "auth" if status == 401 else "membership"
        if status == 401:
            text = "the token is refused (401)"
        else:
            text = (
                "access denied (403): Oura says this usually means the Oura membership has "
                "expired; renew the membership in the Oura app (the token is not the problem)"
            )
        super().__init__(f"Oura API: {text}")


class OuraUnavailable(OuraError):
    def __init__(self, reason: str, message: str, retry_after: float | None = None) -> None:
        self.reason = reason  # rate_limited | server_error | network
        self.retry_after = retry_after
        super().__init__(message)


class OuraResponseError(OuraError):
    reason = "invalid_response"


def retry_after_s(value: str | None, now: dt.datetime | None = None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - (now or dt.datetime.now(dt.UTC))).total_seconds())


Sleep = Callable[[float], Awaitable[None]]
Renew = Callable[[Token], Awaitable[Token | None]]
"""Given the token the API refused (401), a fresh one (refreshed), or None when there is none."""


class OuraClient:
    """`async with OuraClient(token) as oura: days = await oura.days(start, end)`."""

    def __init__(
        self,
        token: Token,
        *,
        base_url: str = DEFAULT_BASE_URL,
        timeout_s: float = 15.0,
        attempts: int = 5,
        backoff: Backoff | None = None,
        max_wait_s: float = 120.0,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep = asyncio.sleep,
        renew: Renew | None = None,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self._token = token
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.attempts = attempts
        self._backoff = backoff or Backoff(base=0.5, cap=30.0)
        self.max_wait_s = max_wait_s
        self._transport = transport
        self._sleep = sleep
        self._renew = renew
        self._http: httpx.AsyncClient | None = None
        self.requests = 0  # HTTP requests sent, retries included
        self.skipped = 0  # documents skipped for want of a `day`

    async def __aenter__(self) -> OuraClient:
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(self.timeout_s),
            transport=self._transport,
            follow_redirects=False,
        )
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def days(
        self,
        start: dt.date,
        end: dt.date,
        *,
        on_page: Callable[[str, int], None] | None = None,
    ) -> list[OuraDay]:
        """The days start..end (inclusive) of all three endpoints, merged per day.
        `on_page(kind, documents)` is called after each page (for a progress bar)."""
        found: list[tuple[str, Doc]] = []
        for kind in KINDS:
            async for page in self.pages(kind, start, end):
                docs, skipped = page.docs()
                self.skipped += skipped
                if skipped:
                    log.warning("%s: %d documents without a day skipped", kind, skipped)
                found += [(kind, d) for d in docs if start <= d.day <= end]
                if on_page is not None:
                    on_page(kind, len(page.data))
        return merge(found)

    async def pages(self, kind: str, start: dt.date, end: dt.date) -> AsyncIterator[Page]:
        """Every page of one endpoint. end_date is sent one day later (so that `end` is in
        whether the server reads end_date as inclusive or exclusive)."""
        params = {
            "start_date": start.isoformat(),
            "end_date": (end + dt.timedelta(days=1)).isoformat(),
        }
        path = f"/v2/usercollection/{ENDPOINTS[kind]}"
        token: str | None = None
        for _ in range(MAX_PAGES):
            page = await self._get(
                path, params if token is None else {**params, "next_token": token}
            )
            yield page
            if not page.next_token:
                return
            token = page.next_token
        raise OuraResponseError(f"Oura API: {path} sent more than {MAX_PAGES} pages")

    async def _get(self, path: str, params: dict[str, str]) -> Page:
        """One page; on a 401 the token is renewed (when the client can) and the request
        sent once more."""
        try:
            return await self._get_once(path, params)
        except OuraAuthError as exc:
            if exc.status != 401 or self._renew is None:
                raise
            fresh = await self._renew(self._token)
            if fresh is None:
                raise
            self._token = fresh
            return await self._get_once(path, params)

    async def _get_once(self, path: str, params: dict[str, str]) -> Page:
        if self._http is None:
            raise RuntimeError("OuraClient is not open (use `async with`)")
        headers = {"Authorization": f"Bearer {self._token.reveal()}"}
        self._backoff.reset()
        failure: OuraUnavailable | None = None
        for attempt in range(1, self.attempts + 1):
            if failure is not None:
                delay = max(self._backoff.next_delay(), failure.retry_after or 0.0)
                log.debug("%s: %s; attempt %d in %.1f s", path, failure, attempt, delay)
                await self._sleep(delay)
            try:
                self.requests += 1
                async with asyncio.timeout(self.timeout_s * 2):
                    resp = await self._http.get(path, params=params, headers=headers)
            except (httpx.TransportError, TimeoutError) as exc:
                failure = OuraUnavailable(
                    "network", f"Oura API: no answer from {self.base_url}: {type(exc).__name__}"
                )
                continue
            failure = _failure(resp, path)
            if failure is None:
                return _page(resp, path)
            if failure.retry_after is not None and failure.retry_after > self.max_wait_s:
                raise failure
        assert failure is not None
        raise failure


def _failure(resp: httpx.Response, path: str) -> OuraUnavailable | None:
    """None when the response is to be read; a retryable failure; or raises for good."""
    status = resp.status_code
    if status in (401, 403):
        raise OuraAuthError(status)
    if status == 429:
        wait = retry_after_s(resp.headers.get("Retry-After"))
        return OuraUnavailable(
            "rate_limited", f"Oura API: rate limited on {path} (429)", retry_after=wait
        )
    if status >= 500:
        return OuraUnavailable("server_error", f"Oura API: {path} answered {status}")
    if status != 200:
        raise OuraResponseError(f"Oura API: {path} answered {status}")
    return None


def _page(resp: httpx.Response, path: str) -> Page:
    try:
        return msgspec.json.decode(resp.content, type=Page)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise OuraResponseError(f"Oura API: {path}: not a daily document page: {exc}") from exc
