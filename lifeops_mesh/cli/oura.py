"""`lifeops-mesh oura import` (Oura API v2 daily JSON files) and `oura sync` (the Oura API
itself, with the user's token) to LifeOps."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
from pathlib import Path

from lifeops_mesh.cli.common import Subparsers
from lifeops_mesh.local import tool_broker_url
from lifeops_mesh.tools.oura_import import DEFAULT_SYNC_DAYS, import_days, sync_days, sync_token
from lifeops_oura import DEFAULT_BASE_URL


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
