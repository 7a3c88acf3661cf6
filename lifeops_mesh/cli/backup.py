"""`lifeops-mesh backup`: one archive of a running (or stopped) `up` installation."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from lifeops_mesh.backup import take_backup
from lifeops_mesh.cli.common import Subparsers


def register(sub: Subparsers) -> None:
    p = sub.add_parser(
        "backup", help="back up the agents' SQLite databases and the broker state (online)"
    )
    p.add_argument("--data", default="data", help="the data dir of `lifeops-mesh up`")
    p.add_argument("--out", required=True, help="the archive to write (a new .tar file, 0600)")
    p.set_defaults(func=cmd_backup)


def cmd_backup(args: argparse.Namespace) -> int:
    out = Path(args.out)
    manifest = asyncio.run(take_backup(Path(args.data), out))
    for db in manifest.databases:
        rows = ", ".join(f"{t} {n}" for t, n in db.rows.items() if n and t != "schema_migrations")
        print(f"{db.agent}: {db.file.size} bytes ({rows or 'no rows'})")
    for agent, why in manifest.skipped.items():
        print(f"{agent}: not in the archive: {why}")
    print(f"broker: {len(manifest.files)} files (credentials, passwords, ACL, persistence)")
    print(f"backup written to {out}")
    return 0
