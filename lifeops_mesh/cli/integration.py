"""`lifeops-mesh integration-test`: black-box checks of a running mesh (compose's test-runner)."""

from __future__ import annotations

import argparse
import asyncio

from lifeops_mesh.cli.common import Subparsers, add_tool_args, duration
from lifeops_mesh.local import tool_broker_url
from lifeops_mesh.tools.stack_check import render, run_checks
from mesh import codec


def register(sub: Subparsers) -> None:
    p = add_tool_args(
        sub.add_parser(
            "integration-test",
            help="black-box checks of a running mesh: every request answered, a completion "
            "reaching Stats, doctor's live review; exit 1 when one fails",
        )
    )
    p.add_argument(
        "--doctor-broker", help="mqtt://doctor:PASSWORD@host:port (default: as --broker)"
    )
    p.add_argument("--watch", type=duration, default=10.0, help="doctor's review (default 10s)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_integration_test)


def cmd_integration_test(args: argparse.Namespace) -> int:
    tester = tool_broker_url(args.broker, args.data)
    doctor = tool_broker_url(args.doctor_broker or args.broker, args.data, principal="doctor")
    report = asyncio.run(run_checks(tester, doctor, watch_s=args.watch))
    print(codec.encode(report).decode() if args.json else render(report))
    return 0 if report.ok else 1
