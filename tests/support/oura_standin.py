"""A local stand-in of the Oura Cloud API v2 daily endpoints, over real HTTP on a free port.

It serves the documented multiple-document shape `{"data": [...], "next_token": ...}` of
`/v2/usercollection/daily_{sleep,readiness,activity}`, filtered by start_date <= day <
end_date, `page_size` documents a page; a Bearer token maps to one user's documents. Faults
are scripted per endpoint: `fail(endpoint, status, headers, times)` answers the next `times`
requests with that status (429 with Retry-After, 5xx, 401...). Every request is recorded.

Beside it, on the same port, a stand-in of Oura's OAuth2 server (`OAuthStandIn`, reached as
`api.oauth`): `GET /oauth/authorize` redirects (302) to the redirect URI with a `code` and the
`state`, for the account `login_as` names; `POST /oauth/token` exchanges a code (once) or a
refresh token (once: a used or unknown one is `400 invalid_grant`) for a new pair; the access
tokens live `access_lifetime_s` while `expires_in` may say otherwise (`advertised_expires_in`),
so the API answers 401 for an expired one; `GET /oauth/revoke` revokes; `refused[account] =
403` answers the API's requests of that account so. `crash_after_refresh` is called once a
refresh has rotated the tokens, before its answer goes out (a test kills the client there: the
new pair is lost, the stored refresh token is dead).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import secrets
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

ENDPOINTS = ("daily_sleep", "daily_readiness", "daily_activity")


@dataclass
class Seen:
    endpoint: str
    params: dict[str, str]
    authorization: str
    status: int
    at: float  # time.monotonic()


@dataclass
class Fault:
    status: int
    headers: dict[str, str]
    times: int


@dataclass
class Grant:
    account: str
    refresh: str
    access_expires: float  # time.monotonic()


@dataclass
class OAuthStandIn:
    client_id: str = "lifeops-test-client"
    client_secret: str = "client-secret-7c1e"
    login_as: str = ""  # the account whose documents the next authorization grants
    access_lifetime_s: float = 3600.0
    advertised_expires_in: float | None = None  # None: the true lifetime
    token_delay_s: float = 0.0
    crash_after_refresh: Callable[[], None] | None = None
    codes: dict[str, tuple[str, str]] = field(default_factory=dict)  # code -> (account, redirect)
    access: dict[str, Grant] = field(default_factory=dict)  # access token -> grant
    refresh_tokens: dict[str, str] = field(default_factory=dict)  # live refresh -> account
    used_refresh: set[str] = field(default_factory=set)
    invalid_grants: int = 0
    refreshes: int = 0
    revoked: int = 0

    def authorize(self, params: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        if params.get("client_id") != self.client_id or params.get("response_type") != "code":
            return 400, {}, b'{"error": "invalid_request"}'
        code = secrets.token_urlsafe(12)
        redirect = params.get("redirect_uri", "")
        self.codes[code] = (self.login_as, redirect)
        query = urllib.parse.urlencode({"code": code, "state": params.get("state", "")})
        return 302, {"Location": f"{redirect}?{query}"}, b""

    def token(self, form: dict[str, str]) -> tuple[int, dict[str, str], bytes, bool]:
        """(status, headers, body, whether this was a refresh)"""
        if (form.get("client_id"), form.get("client_secret")) != (
            self.client_id,
            self.client_secret,
        ):
            return 401, {}, b'{"error": "invalid_client"}', False
        grant = form.get("grant_type")
        if grant == "authorization_code":
            found = self.codes.pop(form.get("code", ""), None)
            if found is None or found[1] != form.get("redirect_uri"):
                self.invalid_grants += 1
                return 400, {}, b'{"error": "invalid_grant"}', False
            return (*self._issue(found[0]), False)
        if grant == "refresh_token":
            old = form.get("refresh_token", "")
            account = self.refresh_tokens.pop(old, None)
            if account is None:
                self.invalid_grants += 1
                body = {
                    "error": "invalid_grant",
                    "error_description": "Token Already Used Or Revoked",
                }
                return 400, {}, json.dumps(body).encode(), True
            self.used_refresh.add(old)
            self.refreshes += 1
            return (*self._issue(account), True)
        return 400, {}, b'{"error": "unsupported_grant_type"}', False

    def _issue(self, account: str) -> tuple[int, dict[str, str], bytes]:
        access, fresh = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
        self.access[access] = Grant(account, fresh, time.monotonic() + self.access_lifetime_s)
        self.refresh_tokens[fresh] = account
        told = self.advertised_expires_in
        body = {
            "token_type": "bearer",
            "access_token": access,
            "refresh_token": fresh,
            "expires_in": self.access_lifetime_s if told is None else told,
        }
        return 200, {}, json.dumps(body).encode()

    def revoke(self, params: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        grant = self.access.pop(params.get("access_token", ""), None)
        if grant is None:
            return 400, {}, b'{"error": "invalid_token"}'
        self.refresh_tokens.pop(grant.refresh, None)
        self.revoked += 1
        return 200, {}, b"{}"

    def account_of(self, token: str) -> str | None:
        """The account of a live access token (None: unknown or expired)."""
        grant = self.access.get(token)
        if grant is None or grant.access_expires <= time.monotonic():
            return None
        return grant.account


@dataclass
class OuraStandIn:
    page_size: int = 2
    # token -> endpoint -> day -> document
    docs: dict[str, dict[str, dict[dt.date, dict[str, Any]]]] = field(default_factory=dict)
    faults: dict[str, list[Fault]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    port: int = 0
    refused: dict[str, int] = field(default_factory=dict)  # account -> status of every request
    handlers: set[asyncio.Task[Any]] = field(default_factory=set)
    oauth: OAuthStandIn = field(default_factory=OAuthStandIn)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def put(self, token: str, endpoint: str, day: dt.date, score: int | None) -> None:
        """Set (or revise) one day's document of one endpoint."""
        self.docs.setdefault(token, {}).setdefault(endpoint, {})[day] = {
            "id": f"{endpoint}-{day.isoformat()}",
            "day": day.isoformat(),
            "score": score,
            "contributors": {},
            "timestamp": f"{day.isoformat()}T00:00:00+00:00",
        }

    def fail(
        self, endpoint: str, status: int, headers: dict[str, str] | None = None, times: int = 1
    ) -> None:
        self.faults.setdefault(endpoint, []).append(Fault(status, headers or {}, times))

    def _answer(
        self, endpoint: str, params: dict[str, str], auth: str
    ) -> tuple[int, dict[str, str], bytes]:
        queue = self.faults.get(endpoint, [])
        if queue:
            fault = queue[0]
            fault.times -= 1
            if fault.times <= 0:
                queue.pop(0)
            body = json.dumps({"detail": f"stand-in fault {fault.status}"}).encode()
            return fault.status, fault.headers, body
        token = auth.removeprefix("Bearer ")
        if auth.startswith("Bearer ") and token not in self.docs:
            token = self.oauth.account_of(token) or token
        if not auth.startswith("Bearer ") or token not in self.docs:
            return 401, {}, b'{"detail": "Unauthorized"}'
        if token in self.refused:
            problem = {"status": self.refused[token], "title": "Forbidden", "detail": "no access"}
            return self.refused[token], {}, json.dumps(problem).encode()
        try:
            start = dt.date.fromisoformat(params["start_date"])
            end = dt.date.fromisoformat(params["end_date"])
        except (KeyError, ValueError):
            return 400, {}, b'{"detail": "start_date and end_date are required"}'
        days = sorted(d for d in self.docs[token].get(endpoint, {}) if start <= d < end)
        offset = int(params.get("next_token", "0") or "0")
        chunk = days[offset : offset + self.page_size]
        more = offset + self.page_size < len(days)
        page = {
            "data": [self.docs[token][endpoint][d] for d in chunk],
            "next_token": str(offset + self.page_size) if more else None,
        }
        return 200, {}, json.dumps(page).encode()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            await self._handle(reader, writer)
        finally:
            self.handlers.discard(task)
            writer.close()  # also when cancelled at the end of a test

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)
                }
                form_body = await reader.readexactly(int(headers.get("content-length", "0")))
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            writer.close()
            return
        _method, target, _version = lines[0].split(" ", 2)
        url = urllib.parse.urlsplit(target)
        params = dict(urllib.parse.parse_qsl(url.query))
        endpoint = url.path.removeprefix("/v2/usercollection/")
        auth = headers.get("authorization", "")
        refreshed = False
        if endpoint in ENDPOINTS:
            status, extra, body = self._answer(endpoint, params, auth)
        elif url.path == "/oauth/authorize":
            status, extra, body = self.oauth.authorize(params)
        elif url.path == "/oauth/token":
            await asyncio.sleep(self.oauth.token_delay_s)
            form = dict(urllib.parse.parse_qsl(form_body.decode("latin-1")))
            status, extra, body, refreshed = self.oauth.token(form)
            crash = self.oauth.crash_after_refresh
            if refreshed and status == 200 and crash is not None:
                self.oauth.crash_after_refresh = None
                crash()  # rotated: the client dies before it has the new pair
                writer.close()
                return
        elif url.path == "/oauth/revoke":
            status, extra, body = self.oauth.revoke(params)
        else:
            status, extra, body = 404, {}, b'{"detail": "Not Found"}'
        self.seen.append(Seen(endpoint, params, auth, status, time.monotonic()))
        out = [f"HTTP/1.1 {status} X", "Content-Type: application/json"]
        out += [f"{k}: {v}" for k, v in extra.items()]
        out += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
        writer.write("\r\n".join(out).encode("latin-1") + body)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()


@contextlib.asynccontextmanager
async def oura_standin(page_size: int = 2) -> AsyncIterator[OuraStandIn]:
    api = OuraStandIn(page_size=page_size)
    server = await asyncio.start_server(api._serve, "127.0.0.1", 0)
    api.port = server.sockets[0].getsockname()[1]
    try:
        yield api
    finally:
        server.close()
        for task in list(api.handlers):
            task.cancel()
        await asyncio.gather(*api.handlers, return_exceptions=True)
        await server.wait_closed()
