"""`lifeops-mesh dlq list|replay`: an agent's dead letters."""

from __future__ import annotations

import argparse
import asyncio

from lifeops_mesh import registry
from lifeops_mesh.cli.common import Subparsers
from lifeops_mesh.local import tool_broker_url
from lifeops_mesh.tools.dlq import list_dead_letters, render, replay
from mesh import codec


def register(sub: Subparsers) -> None:
    dlq = sub.add_parser("dlq", help="dead letters").add_subparsers(dest="what", required=True)
    for name, fn, text in (
        ("list", cmd_list, "show an agent's dead letters"),
        ("replay", cmd_replay, "send a dead letter (or a fix) again"),
    ):
        p = dlq.add_parser(name, help=text)
        p.add_argument("--agent", default="stats", choices=registry.names())
        p.add_argument("--db", help="the agent's database URL (default: DATA/<agent>.db)")
        p.add_argument("--data", help="the data dir of `lifeops-mesh up` (default ./data)")
        p.set_defaults(func=fn)
        if name == "list":
            p.add_argument("--all", action="store_true", help="include replayed ones")
        else:
            p.add_argument("id", help="the dead letter's id (from `dlq list`)")
            p.add_argument("--payload", help="a fixed payload to send instead")
            p.add_argument("--broker", help="mqtt://tester:PASSWORD@host:port")


def db_of(args: argparse.Namespace) -> str:
    from pathlib import Path

    return str(args.db or f"sqlite:///{Path(args.data or 'data').resolve() / (args.agent + '.db')}")


def cmd_list(args: argparse.Namespace) -> int:
    items = asyncio.run(list_dead_letters(db_of(args), include_replayed=args.all))
    print(render(items))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    url = tool_broker_url(args.broker, args.data)
    reply = asyncio.run(replay(db_of(args), url, args.id, args.payload))
    print(codec.encode(reply).decode() if reply is not None else "published")
    return 0 if reply is None or getattr(reply, "success", True) else 1
