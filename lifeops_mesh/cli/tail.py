"""`lifeops-mesh tail [FILTER ...]`: a live, readable view of mesh traffic."""

from __future__ import annotations

import argparse
import asyncio

from lifeops_mesh.cli.common import Subparsers, add_tool_args
from lifeops_mesh.local import tool_broker_url
from lifeops_mesh.tools.tail import tail


def register(sub: Subparsers) -> None:
    p = add_tool_args(sub.add_parser("tail", help="a live, readable view of mesh traffic"))
    p.add_argument("filter", nargs="*", help="MQTT topic filters (default #)")
    p.add_argument("--timeout", type=float, help="stop after this many seconds")
    p.add_argument("--count", type=int, help="stop after this many messages")
    p.set_defaults(func=cmd_tail)


def cmd_tail(args: argparse.Namespace) -> int:
    url = tool_broker_url(args.broker, args.data)
    return asyncio.run(tail(url, args.filter or ["#"], timeout=args.timeout, count=args.count))
