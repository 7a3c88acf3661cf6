"""`lifeops-mesh oura` as a process against the Oura stand-in: the environment that points it
at the stand-in's OAuth2 server and API, a command run to its end, and `oura login` with a
browser that is an HTTP client (following Oura's redirect to the command's port, or pasting the
redirect's address on its stdin)."""

from __future__ import annotations

import asyncio
import os
import sys

import httpx

from tests.support.oura_standin import OuraStandIn


def oauth_env(api: OuraStandIn, port: int) -> dict[str, str]:
    """The LIFEOPS_OURA_* settings for the stand-in, the redirect URI on `port`."""
    return {
        "LIFEOPS_OURA_CLIENT_ID": api.oauth.client_id,
        "LIFEOPS_OURA_CLIENT_SECRET": api.oauth.client_secret,
        "LIFEOPS_OURA_AUTHORIZE_URL": f"{api.base_url}/oauth/authorize",
        "LIFEOPS_OURA_TOKEN_URL": f"{api.base_url}/oauth/token",
        "LIFEOPS_OURA_REVOKE_URL": f"{api.base_url}/oauth/revoke",
        "LIFEOPS_OURA_REDIRECT_URI": f"http://127.0.0.1:{port}/callback",
        "LIFEOPS_OURA_API_URL": api.base_url,
        "LIFEOPS_OURA_SYNC_INTERVAL_S": "1",
        "LIFEOPS_OURA_BACKFILL_DAYS": "10",
        "LIFEOPS_OURA_REFRESH_MARGIN_S": "1",
    }


async def oura_cli(*args: str, env: dict[str, str], stdin: bytes | None = None) -> tuple[int, str]:
    """`lifeops-mesh oura ARGS...` run to its end: its exit code and output."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lifeops_mesh", "oura", *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env={**os.environ, **env},
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(stdin or b""), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def login(uid: str, db: str, env: dict[str, str], *, paste: bool = False) -> str:
    """`lifeops-mesh oura login --user UID`: the browser is an HTTP client that opens the
    printed URL and follows Oura's redirect to the command's port (or, with `paste`, takes the
    redirect's address and pastes it on the command's stdin)."""
    args = ["login", "--user", uid, "--db", db, "--wait", "60"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lifeops_mesh", "oura", *args, *(["--no-listen"] if paste else []),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env={**os.environ, **env},
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdin is not None
    seen = ""
    async with asyncio.timeout(30):
        while "/oauth/authorize?" not in seen:
            line = (await proc.stdout.readline()).decode()
            assert line, f"login ended early: {seen}"
            seen += line
    url = next(w for w in seen.split() if "/oauth/authorize?" in w)
    async with httpx.AsyncClient(timeout=10) as browser:
        if paste:
            redirect = await browser.get(url)
            assert redirect.status_code == 302
            proc.stdin.write(redirect.headers["location"].encode() + b"\n")
            await proc.stdin.drain()
        else:
            page: httpx.Response | None = None
            for _ in range(200):  # the command listens once it has printed the URL
                try:
                    page = await browser.get(url, follow_redirects=True)
                    break
                except httpx.ConnectError:
                    await asyncio.sleep(0.1)
            assert page is not None and page.status_code == 200 and "login received" in page.text
    rest, _ = await asyncio.wait_for(proc.communicate(), 60)
    out = seen + rest.decode()
    assert proc.returncode == 0, out
    assert f"{uid} is logged in to Oura" in out
    return out
