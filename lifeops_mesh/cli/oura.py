"""`lifeops-mesh oura import` (Oura API v2 daily JSON files) and `oura sync` (the Oura API
itself, with the user's token) to LifeOps; `oura login|logout|status` (the OAuth tokens LifeOps
keeps per user)."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
from pathlib import Path

from lifeops_mesh.cli.common import Subparsers
from lifeops_mesh.local import tool_broker_url
from lifeops_mesh.tools import oura_login as auth
from lifeops_mesh.tools.oura_import import DEFAULT_SYNC_DAYS, import_days, sync_days, sync_token
from lifeops_oura import DEFAULT_BASE_URL
from mesh import ConfigError


def register(sub: Subparsers) -> None:
    oura = sub.add_parser("oura", help="Oura ring data").add_subparsers(dest="what", required=True)
    imp = oura.add_parser("import", help="send Oura API v2 daily JSON files to LifeOps")
    imp.add_argument("path", help="a daily_sleep/daily_readiness/daily_activity JSON file or dir")
    imp.add_argument("--user", required=True, help="the user id the data belongs to")
    imp.add_argument("--broker", help="mqtt://tester:PASSWORD@host:port")
    imp.add_argument("--data", help="the data dir of `lifeops-mesh up` (default ./data)")
    imp.add_argument("--chunk", type=int, default=30, help="days per request")
    imp.set_defaults(func=cmd_import)
    syn = oura.add_parser("sync", help="fetch a user's daily scores from the Oura API v2 now")
    syn.add_argument("--user", required=True, help="the user id the data belongs to")
    syn.add_argument(
        "--since",
        type=dt.date.fromisoformat,
        help=f"first day, YYYY-MM-DD (default: {DEFAULT_SYNC_DAYS} days ago)",
    )
    syn.add_argument(
        "--token-file",
        type=Path,
        help="a file holding the personal access token (default: LIFEOPS_OURA_TOKEN_FILE_<USER> "
        "or LIFEOPS_OURA_TOKEN_<USER>)",
    )
    syn.add_argument("--api-url", help=f"the Oura API (default {DEFAULT_BASE_URL})")
    syn.add_argument("--broker", help="mqtt://tester:PASSWORD@host:port")
    syn.add_argument("--data", help="the data dir of `lifeops-mesh up` (default ./data)")
    syn.add_argument("--chunk", type=int, default=30, help="days per request")
    syn.set_defaults(func=cmd_sync)
    _register_auth(oura)


def _db_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", help="LifeOps' database (default LIFEOPS_DB_URL, else DATA/lifeops.db)")
    p.add_argument("--data", help="the data dir of `lifeops-mesh up` (default ./data)")


def _register_auth(oura: Subparsers) -> None:
    login = oura.add_parser(
        "login", help="authorize LifeOps to read a user's Oura daily data (OAuth2)"
    )
    login.add_argument("--user", required=True, help="the LifeOps user id")
    login.add_argument(
        "--port", type=int, help="listen for the redirect here (default: the redirect URI's)"
    )
    login.add_argument(
        "--no-listen", action="store_true", help="only take the redirect URL pasted on stdin"
    )
    login.add_argument(
        "--wait", type=float, default=auth.DEFAULT_WAIT_S, help="seconds to wait for it"
    )
    login.add_argument(
        "--start", type=Path, metavar="FILE", help="without a terminal: print the URL, keep "
        "the state in FILE, exit (then --finish FILE --redirect-url URL)",
    )  # fmt: skip
    login.add_argument("--finish", type=Path, metavar="FILE", help="the login --start began")
    login.add_argument("--redirect-url", help="with --finish: the URL Oura redirected to")
    _db_args(login)
    login.set_defaults(func=cmd_login)
    logout = oura.add_parser("logout", help="revoke a user's Oura tokens and forget them")
    logout.add_argument("--user", required=True, help="the LifeOps user id")
    _db_args(logout)
    logout.set_defaults(func=cmd_logout)
    status = oura.add_parser("status", help="each Oura user: token, expiry, last sync, error")
    _db_args(status)
    status.set_defaults(func=cmd_status)


def cmd_import(args: argparse.Namespace) -> int:
    url = tool_broker_url(args.broker, args.data)
    return asyncio.run(import_days(url, args.user, Path(args.path), args.chunk))


def cmd_sync(args: argparse.Namespace) -> int:
    token = sync_token(args.user, args.token_file, os.environ)
    base_url = args.api_url or os.environ.get("LIFEOPS_OURA_API_URL") or DEFAULT_BASE_URL
    url = tool_broker_url(args.broker, args.data)
    return asyncio.run(
        sync_days(url, args.user, token, base_url=base_url, since=args.since, chunk=args.chunk)
    )


def cmd_login(args: argparse.Namespace) -> int:
    config = auth.oauth_config(os.environ)
    if args.start is not None:
        return auth.login_start(config, args.user, args.start)
    url = auth.db_url(args.db, args.data, os.environ)
    state = None
    if args.finish is not None:
        if not args.redirect_url:
            raise ConfigError("--finish needs --redirect-url URL")
        state = auth.pending_state(args.finish, args.user)

    async def run() -> int:
        async with auth.lifeops_store(url) as store:
            if state is not None:
                print(await auth.store_login(store, config, args.user, args.redirect_url, state))
                return 0
            port = None if args.no_listen else args.port or auth.redirect_port(config)
            return await auth.login(store, config, args.user, port=port, wait_s=args.wait)

    code = asyncio.run(run())
    if args.finish is not None:
        args.finish.unlink(missing_ok=True)
    return code


def cmd_logout(args: argparse.Namespace) -> int:
    config = auth.oauth_config(os.environ) if os.environ.get("LIFEOPS_OURA_CLIENT_ID") else None
    url = auth.db_url(args.db, args.data, os.environ)

    async def run() -> int:
        async with auth.lifeops_store(url) as store:
            return await auth.logout(store, config, args.user)

    return asyncio.run(run())


def cmd_status(args: argparse.Namespace) -> int:
    url = auth.db_url(args.db, args.data, os.environ)

    async def run() -> int:
        async with auth.lifeops_store(url) as store:
            return await auth.status(store, os.environ)

    return asyncio.run(run())
