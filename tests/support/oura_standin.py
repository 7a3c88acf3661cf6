"""A local stand-in of the Oura Cloud API v2 daily endpoints, over real HTTP on a free port.

It serves the documented multiple-document shape `{"data": [...], "next_token": ...}` of
`/v2/usercollection/daily_{sleep,readiness,activity}`, filtered by start_date <= day <
end_date, `page_size` documents a page; a Bearer token maps to one user's documents. Faults
are scripted per endpoint: `fail(endpoint, status, headers, times)` answers the next `times`
requests with that status (429 with Retry-After, 5xx, 401...). Every request is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import time
import urllib.parse
from collections.abc import AsyncIterator
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
class OuraStandIn:
    page_size: int = 2
    # token -> endpoint -> day -> document
    docs: dict[str, dict[str, dict[dt.date, dict[str, Any]]]] = field(default_factory=dict)
    faults: dict[str, list[Fault]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    port: int = 0

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
        if not auth.startswith("Bearer ") or token not in self.docs:
            return 401, {}, b'{"detail": "Unauthorized"}'
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
        try:
            async with asyncio.timeout(10):
                head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            writer.close()
            return
        lines = head.decode("latin-1").split("\r\n")
        _method, target, _version = lines[0].split(" ", 2)
        headers = {
            k.strip().lower(): v.strip()
            for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)
        }
        url = urllib.parse.urlsplit(target)
        params = dict(urllib.parse.parse_qsl(url.query))
        endpoint = url.path.removeprefix("/v2/usercollection/")
        auth = headers.get("authorization", "")
        if endpoint in ENDPOINTS:
            status, extra, body = self._answer(endpoint, params, auth)
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
        await server.wait_closed()
