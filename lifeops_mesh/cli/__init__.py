"""`lifeops-mesh`: run the mesh, one agent, or the operator tools.

Each command is a module of this package that declares its arguments beside its handler
(`register(subparsers)`); this module only puts them together.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from lifeops_mesh.cli import (
    backup,
    broker,
    contract,
    demo,
    dlq,
    doctor,
    health,
    integration,
    oura,
    reliability,
    request,
    restore,
    run,
    store,
    tail,
    trace,
    up,
)
from lifeops_mesh.cli.common import Command
from mesh import MeshError, NotAuthorized

COMMANDS: tuple[Command, ...] = (
    up,
    run,
    broker,
    oura,
    tail,
    request,
    health,
    demo,
    doctor,
    integration,
    reliability,
    trace,
    dlq,
    contract,
    backup,
    restore,
    store,
)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="lifeops-mesh", description=__doc__.splitlines()[0])
    sub = root.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return root


PASSWORD_HINT = (
    "`lifeops-mesh up` keeps every account's password in DATA/broker/credentials.toml; "
    "pass --broker mqtt://USER:PASSWORD@HOST:PORT or set LIFEOPS_TOOL_BROKER_URL"
)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "tool", False):
        # A tool prints one line per problem; gmqtt's own log lines (CONNACK codes, reconnects)
        # say the same thing worse. Agents (run, up) keep them in their logs.
        logging.getLogger("gmqtt").setLevel(logging.CRITICAL)
    try:
        return int(args.func(args))
    except NotAuthorized as exc:
        print(f"lifeops-mesh: {exc} ({PASSWORD_HINT})", file=sys.stderr)
        return 2
    except MeshError as exc:
        print(f"lifeops-mesh: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


__all__ = ["main", "parser"]
