"""`lifeops-mesh contract check|docs|asyncapi`: the contract, checked and documented."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lifeops_mesh.cli.common import Subparsers, the_contract
from lifeops_mesh.tools.asyncapi import generate
from lifeops_mesh.tools.contract_docs import render_into, topic_table


def register(sub: Subparsers) -> None:
    contract = sub.add_parser("contract", help="contract tooling").add_subparsers(
        dest="what", required=True
    )
    check = contract.add_parser("check", help="load and check topics.toml")
    check.set_defaults(func=cmd_check)
    docs = contract.add_parser("docs", help="print the README's topic table (or --write it)")
    docs.add_argument("--write", metavar="README", help="update the table inside this file")
    docs.set_defaults(func=cmd_docs)
    aapi = contract.add_parser("asyncapi", help="print an AsyncAPI 3.0 document (JSON)")
    aapi.add_argument("--host", default="localhost:1883", help="the server's host:port")
    aapi.set_defaults(func=cmd_asyncapi)


def cmd_check(args: argparse.Namespace) -> int:
    contract = the_contract()
    print(f"topics.toml: {len(contract.topics)} entries, sound")
    for key, e in contract.topics.items():
        print(
            f"  {key:<20} {e.topic:<32} {e.kind:<12} qos {e.qos} "
            f"{'retained ' if e.retain else ''}{e.schema}"
        )
    return 0


def cmd_docs(args: argparse.Namespace) -> int:
    contract = the_contract()
    if args.write:
        readme = Path(args.write)
        readme.write_text(
            render_into(readme.read_text(encoding="utf-8"), contract), encoding="utf-8"
        )
        print(f"{readme}: topic table updated")
    else:
        print(topic_table(contract))
    return 0


def cmd_asyncapi(args: argparse.Namespace) -> int:
    print(json.dumps(generate(the_contract(), host=args.host), indent=2))
    return 0
