"""`lifeops-mesh contract check|docs|asyncapi|snapshot|diff`: the contract, checked, documented
and compared with another version of itself."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lifeops_mesh.cli.common import Subparsers, the_contract
from lifeops_mesh.tools import contract_source
from lifeops_mesh.tools.asyncapi import generate
from lifeops_mesh.tools.contract_diff import diff
from lifeops_mesh.tools.contract_docs import render_into, topic_table
from lifeops_mesh.tools.contract_snapshot import encode


def register(sub: Subparsers) -> None:
    contract = sub.add_parser("contract", help="contract tooling").add_subparsers(
        dest="what", required=True
    )
    check = contract.add_parser("check", help="load and check topics.toml")
    check.set_defaults(func=cmd_check)
    docs = contract.add_parser(
        "docs", help="print the topic table of docs/contract.md (or --write it into a file)"
    )
    docs.add_argument(
        "--write", metavar="FILE", help="update the table inside FILE (docs/contract.md)"
    )
    docs.set_defaults(func=cmd_docs)
    aapi = contract.add_parser("asyncapi", help="print an AsyncAPI 3.0 document (JSON)")
    aapi.add_argument("--host", default="localhost:1883", help="the server's host:port")
    aapi.set_defaults(func=cmd_asyncapi)
    snap = contract.add_parser(
        "snapshot", help="print the contract with its payload schemas as one JSON document"
    )
    snap.add_argument("--write", metavar="FILE", help="write it to FILE instead")
    snap.set_defaults(func=cmd_snapshot)
    _register_diff(contract)


def _register_diff(contract: Subparsers) -> None:
    d = contract.add_parser(
        "diff",
        help="classify the changes between two contracts; exit 1 on a breaking one",
        description="OLD and NEW are snapshots (contract snapshot) or topics.toml files; NEW "
        "defaults to this installation's contract. With --against REF, OLD is the contract of "
        "git revision REF and the one argument, if any, is NEW. A breaking change passes only "
        "with the contract's [meta] version (its major version) raised.",
    )
    d.add_argument("old", nargs="?", metavar="OLD", help="the older contract")
    d.add_argument("new", nargs="?", metavar="NEW", help="the newer contract (default: this one)")
    d.add_argument("--against", metavar="GIT-REF", help="compare with the contract at GIT-REF")
    d.set_defaults(func=cmd_diff)


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


BUMP_HINT = (
    "breaking changes need the contract's major version raised ([meta] version in topics.toml) "
    "and the released snapshot (lifeops_contract/released/) replaced with it"
)


def cmd_snapshot(args: argparse.Namespace) -> int:
    body = encode(contract_source.current())
    if args.write:
        Path(args.write).write_bytes(body)
        print(f"{args.write}: contract snapshot written")
    else:
        sys.stdout.buffer.write(body)
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    if args.against:
        if args.new:
            print("contract diff: with --against give at most one contract (NEW)", file=sys.stderr)
            return 2
        old, new_spec = contract_source.at_revision(args.against), args.old
    elif args.old:
        old, new_spec = contract_source.from_file(args.old), args.new
    else:
        print("contract diff: give OLD (a snapshot or topics.toml) or --against GIT-REF",
              file=sys.stderr)  # fmt: skip
        return 2
    new = contract_source.from_file(new_spec) if new_spec else contract_source.current()
    changes = diff(old, new)
    for change in changes:
        print(change.line())
    breaking = [c for c in changes if c.breaking]
    versions = f"contract version {old.contract_version} -> {new.contract_version}"
    print(f"{len(breaking)} breaking, {len(changes) - len(breaking)} compatible ({versions})")
    if breaking and new.contract_version <= old.contract_version:
        print(BUMP_HINT, file=sys.stderr)
        return 1
    return 0
