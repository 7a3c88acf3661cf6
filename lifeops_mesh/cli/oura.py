"""`lifeops-mesh oura import`: Oura API v2 daily JSON files to LifeOps."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from lifeops_mesh.cli.common import Subparsers
from lifeops_mesh.local import tool_broker_url
from lifeops_mesh.tools.oura_import import import_days


def register(sub: Subparsers) -> None:
    oura = sub.add_parser("oura", help="Oura ring data").add_subparsers(dest="what", required=True)
    imp = oura.add_parser("import", help="send Oura API v2 daily JSON files to LifeOps")
    imp.add_argument("path", help="a daily_sleep/daily_readiness/daily_activity JSON file or dir")
    imp.add_argument("--user", required=True, help="the user id the data belongs to")
    imp.add_argument("--broker", help="mqtt://tester:PASSWORD@host:port")
    imp.add_argument("--data", help="the data dir of `lifeops-mesh up` (default ./data)")
    imp.add_argument("--chunk", type=int, default=30, help="days per request")
    imp.set_defaults(func=cmd_import)


def cmd_import(args: argparse.Namespace) -> int:
    url = tool_broker_url(args.broker, args.data)
    return asyncio.run(import_days(url, args.user, Path(args.path), args.chunk))
