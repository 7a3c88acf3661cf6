"""`lifeops-mesh reliability`: inject faults into a local mesh and count what was lost."""

from __future__ import annotations

import argparse
import asyncio
import logging

from lifeops_mesh.cli.common import Subparsers
from lifeops_mesh.tools.reliability import run


def register(sub: Subparsers) -> None:
    p = sub.add_parser("reliability", help="inject faults into a local mesh; count losses")
    p.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    p.add_argument("--users", type=int, default=20)
    p.add_argument("--rate", type=float, default=40.0, help="requests per second")
    p.add_argument("--outage", type=float, default=20.0, help="broker outage in seconds")
    p.add_argument("--kills", type=int, default=2, help="kill -9 rounds per agent")
    p.add_argument("--seed", type=int, default=1)
    p.set_defaults(func=cmd_reliability)


def cmd_reliability(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="    (%(name)s) %(message)s")
    logging.getLogger("gmqtt").setLevel(logging.ERROR)
    report = asyncio.run(
        run(
            backend=args.backend,
            users=args.users,
            rate=args.rate,
            outage_s=args.outage,
            kills=args.kills,
            seed=args.seed,
        )
    )
    print()
    print(report.table())
    return 0 if report.ok else 1
