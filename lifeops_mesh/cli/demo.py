"""`lifeops-mesh demo`: a realistic week for two users pushed through a running mesh."""

from __future__ import annotations

import argparse
import asyncio

from lifeops_mesh.cli.common import Subparsers, add_tool_args
from lifeops_mesh.local import tool_broker_url
from lifeops_mesh.tools.demo import run_demo


def register(sub: Subparsers) -> None:
    p = add_tool_args(
        sub.add_parser("demo", help="push a realistic week for two users through a running mesh")
    )
    p.add_argument("--days", type=int, default=7)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    return asyncio.run(run_demo(tool_broker_url(args.broker, args.data), days=args.days))
