"""`lifeops-mesh doctor`: the integration review (contract, ACL, compose, live traffic)."""

from __future__ import annotations

import argparse
from pathlib import Path

import lifeops_contract
from lifeops_mesh.broker import acl_file
from lifeops_mesh.cli.common import Subparsers, duration, the_contract
from lifeops_mesh.local import tool_broker_url
from lifeops_mesh.tools.doctor import build_report, markdown
from mesh import codec


def register(sub: Subparsers) -> None:
    p = sub.add_parser("doctor", help="the integration review: contract, ACL, compose, live")
    p.add_argument("--watch", metavar="DURATION", type=duration, help="watch the broker, e.g. 30s")
    p.add_argument("--broker", help="mqtt://doctor:PASSWORD@host:port (read-only account)")
    p.add_argument("--data", help="the data dir of `lifeops-mesh up` (default ./data)")
    p.add_argument("--json", action="store_true", help="JSON instead of Markdown")
    p.add_argument("--contract", help="another topics.toml")
    p.add_argument("--compose", help="another compose.yaml")
    p.add_argument("--acl", help="another ACL file")
    p.set_defaults(func=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    contract = lifeops_contract.load(args.contract) if args.contract else the_contract()
    broker = None
    if args.watch:
        # --broker, LIFEOPS_TOOL_BROKER_URL (a URL without a user is the `doctor` account), or
        # the `up` broker's doctor account
        broker = tool_broker_url(args.broker, args.data, principal="doctor")
    # A checkout's own files when run inside one, else what the package ships.
    compose = Path(args.compose or "compose.yaml")
    acl = Path(args.acl) if args.acl else Path("broker/acl")
    report = build_report(
        contract,
        broker_url=broker,
        watch_s=args.watch or 0,
        compose=compose if compose.exists() else None,
        acl=acl if acl.exists() else acl_file(),
        tests=Path("tests"),
    )
    print(codec.encode(report).decode() if args.json else markdown(report), end="")
    if args.json:
        print()
    return 1 if report.critical else 0
