"""`lifeops-mesh reliability`: inject faults into a local mesh and count what was lost."""

from __future__ import annotations

import argparse
import asyncio
import logging

from lifeops_mesh.cli.common import Subparsers
from lifeops_mesh.tools.reliability import Report, Timing, run


def register(sub: Subparsers) -> None:
    p = sub.add_parser("reliability", help="inject faults into a local mesh; count losses")
    p.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    p.add_argument("--users", type=int, default=20)
    p.add_argument("--rate", type=float, default=40.0, help="requests per second")
    p.add_argument("--outage", type=float, default=20.0, help="broker outage in seconds")
    p.add_argument(
        "--hold", type=float, default=8.0, help="seconds a disk stays full or a lock is held"
    )
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        help="the long form: a random fault every 5-10 s for this many seconds"
        " (default: each kind of fault once)",
    )
    p.add_argument("--kills", type=int, default=1, help="kill -9 rounds per agent (short form)")
    p.add_argument("--repeat", type=int, default=1, help="runs, one after another")
    p.add_argument("--seed", type=int, default=1, help="of the first run; +1 for each next")
    p.set_defaults(func=cmd_reliability)


def cmd_reliability(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="    (%(name)s) %(message)s")
    logging.getLogger("gmqtt").setLevel(logging.ERROR)
    timing = Timing(outage_s=args.outage, hold_s=args.hold)
    reports: list[Report] = []
    for n in range(max(1, args.repeat)):
        report = asyncio.run(
            run(
                backend=args.backend,
                users=args.users,
                rate=args.rate,
                timing=timing,
                duration_s=args.duration,
                kills=args.kills,
                seed=args.seed + n,
            )
        )
        print()
        print(report.table())
        reports.append(report)
    if len(reports) > 1:
        print()
        for n, r in enumerate(reports, 1):
            verdict = "ok" if r.ok else "FAILED"
            print(
                f"run {n}: {len(r.faults)} faults, {r.accepted} accepted, lost {r.lost},"
                f" duplicated {r.duplicated}, events unrecoverable {r.events_unrecoverable},"
                f" stale states {r.states_stale}: {verdict}"
            )
    return 0 if all(r.ok for r in reports) else 1
