"""`lifeops-mesh restore`: an archive of `lifeops-mesh backup` into a data dir."""

from __future__ import annotations

import argparse
from pathlib import Path

from lifeops_mesh.backup import restore
from lifeops_mesh.cli.common import Subparsers


def register(sub: Subparsers) -> None:
    p = sub.add_parser("restore", help="restore a backup into a data dir (empty unless told)")
    p.add_argument("archive", help="the file `lifeops-mesh backup --out` wrote")
    p.add_argument("--data", default="data", help="the data dir to restore into")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="restore into a data dir that is not empty, replacing its databases and broker files",
    )
    p.set_defaults(func=cmd_restore)


def cmd_restore(args: argparse.Namespace) -> int:
    data = Path(args.data)
    manifest = restore(Path(args.archive), data, overwrite=args.overwrite)
    for db in manifest.databases:
        print(f"{db.agent}: {data / Path(db.file.path).name} (checksum and rows checked)")
    for agent, why in manifest.skipped.items():
        print(f"{agent}: not in the archive: {why}")
    print(
        f"restored the backup of {manifest.created_at} into {data}; start it with "
        f"`lifeops-mesh up --data {data}`"
    )
    return 0
