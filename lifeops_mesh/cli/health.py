"""`lifeops-mesh health`: every agent's availability and health, and the broker's figures."""

from __future__ import annotations

import argparse
import asyncio

from lifeops_mesh.cli.common import Subparsers, add_tool_args
from lifeops_mesh.local import tool_broker_url
from lifeops_mesh.tools.health import gather, render
from mesh import codec


def register(sub: Subparsers) -> None:
    p = add_tool_args(
        sub.add_parser("health", help="every agent's availability and health, and the broker's")
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_health)


def cmd_health(args: argparse.Namespace) -> int:
    report = asyncio.run(gather(tool_broker_url(args.broker, args.data)))
    print(codec.encode(report).decode() if args.json else render(report))
    return 0 if report.ok else 1
