"""`lifeops-mesh trace TRACE_ID`: every log line of one trace across the agents."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lifeops_mesh.cli.common import Subparsers
from lifeops_mesh.tools.trace import find, render
from mesh import ConfigError


def register(sub: Subparsers) -> None:
    p = sub.add_parser("trace", help="the whole path of one trace id, from the JSON logs")
    p.add_argument("trace_id")
    p.add_argument("--log", action="append", default=[], help="a log file (repeatable)")
    p.add_argument("--data", help="the data dir of `lifeops-mesh up` (its mesh.log)")
    p.set_defaults(func=cmd_trace)


def cmd_trace(args: argparse.Namespace) -> int:
    files = [Path(f) for f in args.log] or [Path(args.data or "data") / "mesh.log"]
    missing = [f for f in files if not f.exists()]
    if missing:
        raise ConfigError(f"no log file {missing[0]} (pass --log FILE for each agent's log)")
    lines = find(args.trace_id, files)
    if not lines:
        names = ", ".join(str(f) for f in files)
        print(f"lifeops-mesh: no log line of trace {args.trace_id} in {names}", file=sys.stderr)
        return 1
    print(render(lines))
    return 0
