"""`lifeops-mesh oura login|logout|status`: a user's Oura OAuth tokens in LifeOps' store.

`login` prints the authorization URL (with a fresh `state`), then takes the redirect either on
the local port of the redirect URI (the browser on this machine) or pasted on stdin (the browser
on another machine: the page it lands on may not load, its address holds the code), checks the
`state`, exchanges the code and stores the tokens. `--start FILE` / `--finish FILE
--redirect-url URL` split it in two runs for a program without a terminal (the Home Assistant
app): the state waits in FILE. Tokens are never printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import sys
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from lifeops_oura import OuraError, token_for
from lifeops_oura import token_store as tokens
from lifeops_oura.oauth import (
    OAuthConfig,
    authorization_url,
    code_from_redirect,
    exchange_code,
    new_state,
    revoke,
)
from lifeops_oura.tokens import Token
from mesh import ConfigError, Store, open_store

DEFAULT_WAIT_S = 600.0


def oauth_config(env: Mapping[str, str]) -> OAuthConfig:
    config = OAuthConfig.from_env(env)
    if config is None:
        raise ConfigError(
            "set LIFEOPS_OURA_CLIENT_ID and LIFEOPS_OURA_CLIENT_SECRET (or _FILE): the client "
            "id and secret of your Oura application (see README, Oura)"
        )
    return config


def db_url(db: str | None, data: str | None, env: Mapping[str, str]) -> str:
    """--db, else LIFEOPS_DB_URL (set in LifeOps' container), else `up`'s DATA/lifeops.db."""
    if db:
        return db
    if env.get("LIFEOPS_DB_URL"):
        return env["LIFEOPS_DB_URL"]
    return f"sqlite:///{Path(data or 'data').resolve() / 'lifeops.db'}"


@contextlib.asynccontextmanager
async def lifeops_store(url: str) -> AsyncIterator[Store]:
    store = open_store(url)
    await store.open()
    try:
        try:
            async with store.read() as tx:
                await tx.fetchone("SELECT 1 FROM lifeops_oura_tokens LIMIT 1")
        except Exception as exc:
            raise ConfigError(
                f"{url.split('@')[-1]}: no LifeOps token table ({type(exc).__name__}); start "
                "LifeOps once with this database (it creates its tables), or pass --db"
            ) from exc
        yield store
    finally:
        await store.close()


async def store_login(
    store: Store, config: OAuthConfig, user_id: str, redirect: str, state: str
) -> str:
    """Check the redirect's state, exchange its code, store the pair; a line for the user."""
    code = code_from_redirect(redirect, state)
    try:
        pair = await exchange_code(config, code)
    except OuraError as exc:
        raise ConfigError(f"Oura did not exchange the code: {exc}") from exc
    async with store.transaction() as tx:
        row = await tokens.load(tx, user_id, lock=store.dialect == "postgresql")
        await tokens.save(tx, user_id, pair, (row.generation if row else 0) + 1)
    until = pair.expires_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"{user_id} is logged in to Oura: tokens stored (access token valid until {until}, "
        "refreshed by LifeOps). LifeOps syncs this user from its next cycle."
    )


def _instructions(config: OAuthConfig, url: str, listen: int | None) -> str:
    lines = [
        "Open this address in a browser, sign in to Oura and allow access to daily data:",
        "",
        f"  {url}",
        "",
    ]
    if listen is not None:
        lines.append(
            f"Waiting for Oura's redirect on http://localhost:{listen}/ (your application's "
            f"redirect URI is {config.redirect_uri})."
        )
    lines.append(
        "If the browser runs on another machine, the page it lands on may not load: copy the "
        "whole address from its address bar and paste it here, then press Enter."
    )
    return "\n".join(lines)


async def login(
    store: Store, config: OAuthConfig, user_id: str, *, port: int | None, wait_s: float
) -> int:
    state = new_state()
    print(_instructions(config, authorization_url(config, state), port), flush=True)
    got: asyncio.Queue[str] = asyncio.Queue()
    server = await _listen(port, got) if port is not None else None
    pasting = _read_stdin(got)
    try:
        async with asyncio.timeout(wait_s):
            while True:
                redirect = await got.get()
                try:
                    code_from_redirect(redirect, state)
                except ConfigError as exc:
                    print(f"not this login's redirect: {exc}", file=sys.stderr, flush=True)
                    continue
                break
    except TimeoutError:
        raise ConfigError(f"no redirect within {wait_s:g} s: run the login again") from None
    finally:
        if server is not None:
            server.close()
        if pasting:
            asyncio.get_running_loop().remove_reader(sys.stdin.fileno())
    print(await store_login(store, config, user_id, redirect, state))
    return 0


async def _listen(port: int, got: asyncio.Queue[str]) -> asyncio.Server:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                line = await reader.readline()
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
            target = line.decode("latin-1").split(" ")[1] if line.count(b" ") >= 2 else "/"
            if "code=" in target or "error=" in target:
                await got.put(f"http://127.0.0.1:{port}{target}")
                body = b"LifeOps Mesh: Oura login received. You can close this tab.\n"
            else:
                body = b"LifeOps Mesh: waiting for Oura's redirect.\n"
            head = f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}"
            writer.write(head.encode() + b"\r\nConnection: close\r\n\r\n" + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, IndexError):
            pass
        finally:
            writer.close()

    try:  # localhost: 127.0.0.1 and, where the machine has it, ::1 (browsers try both)
        return await asyncio.start_server(serve, "localhost", port)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on localhost:{port} ({exc.strerror}): pass --port or --no-listen"
        ) from exc


def _read_stdin(got: asyncio.Queue[str]) -> bool:
    """Pasted lines into `got`; False when stdin cannot be watched (a file, closed)."""
    loop = asyncio.get_running_loop()

    def ready() -> None:
        line = sys.stdin.readline()
        if not line:
            loop.remove_reader(sys.stdin.fileno())
        elif line.strip():
            got.put_nowait(line.strip())

    try:
        loop.add_reader(sys.stdin.fileno(), ready)
    except (OSError, ValueError):
        return False
    return True


def redirect_port(config: OAuthConfig) -> int:
    parts = urllib.parse.urlsplit(config.redirect_uri)
    return parts.port or (443 if parts.scheme == "https" else 80)


def login_start(config: OAuthConfig, user_id: str, pending: Path) -> int:
    """First half without a terminal: the state into `pending`, the URL printed."""
    state = new_state()
    pending.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(pending, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"user": user_id, "state": state}, f)
    print(f"Oura login for {user_id}: open {authorization_url(config, state)}")
    return 0


def pending_state(pending: Path, user_id: str) -> str:
    """The state `login_start` kept for `user_id`."""
    try:
        saved = json.loads(pending.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{pending}: no login started for {user_id} ({exc})") from exc
    if not isinstance(saved, dict) or saved.get("user") != user_id:
        raise ConfigError(f"{pending}: the login started there is not {user_id}'s")
    return str(saved.get("state"))


async def logout(store: Store, config: OAuthConfig | None, user_id: str) -> int:
    async with store.read() as tx:
        row = await tokens.load(tx, user_id)
    if row is None:
        print(f"{user_id} has no Oura OAuth tokens in LifeOps' store: nothing to forget")
        return 0
    revoked = config is not None and await revoke(config, Token(row.access))
    async with store.transaction() as tx:
        await tokens.forget(tx, user_id)
    said = "revoked at Oura and" if revoked else "not revoked at Oura (it did not confirm), but"
    print(f"{user_id}: Oura tokens {said} forgotten by LifeOps")
    return 0


async def status(store: Store, env: Mapping[str, str]) -> int:
    async with store.read() as tx:
        logged_in = await tokens.users(tx)
        rows = {u: await tokens.load(tx, u) for u in logged_in}
        synced = await tokens.sync_records(tx)
    configured = [u.strip() for u in env.get("LIFEOPS_OURA_USERS", "").split(",") if u.strip()]
    users = sorted(set(configured) | set(logged_in) | set(synced))
    if not users:
        print("no Oura users: `lifeops-mesh oura login --user ID` adds one")
        return 0
    print(f"{'user':<16} {'token':<22} {'expires':<17} {'last sync':<17} last error")
    for user in users:
        row = rows.get(user)
        rec = synced.get(user)
        if row is not None:
            kind = "oauth (login needed)" if row.login_needed else "oauth"
            expires = _when(row.expires_at)
        else:
            kind = "personal" if _has_pat(user, env) else "none (log in)"
            expires = "-"
        last = _when(rec.last_sync_at) if rec and rec.last_sync_at else "never"
        error = (rec.last_error or "-") if rec else "-"
        print(f"{user:<16} {kind:<22} {expires:<17} {last:<17} {error}")
    return 0


def _has_pat(user: str, env: Mapping[str, str]) -> bool:
    try:
        return token_for(user, env) is not None
    except ConfigError:
        return True  # set, but unreadable: LifeOps says why at startup


def _when(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M")
