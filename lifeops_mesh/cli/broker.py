"""`lifeops-mesh broker acl|passwords`: the broker's ACL and accounts."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from lifeops_contract import with_discovery_prefix
from lifeops_mesh.cli.common import Subparsers, the_contract
from mesh import ConfigError
from mesh.broker.accounts import ensure_accounts, install_private
from mesh.broker.acl import generate_acl


def register(sub: Subparsers) -> None:
    broker = sub.add_parser("broker", help="broker tooling").add_subparsers(
        dest="what", required=True
    )
    acl = broker.add_parser("acl", help="print the ACL generated from topics.toml")
    acl.add_argument(
        "--discovery-prefix",
        help="Home Assistant's discovery prefix when not `homeassistant` "
        "(default: LIFEOPS_HA_DISCOVERY_PREFIX)",
    )
    acl.set_defaults(func=cmd_acl)
    pw = broker.add_parser("passwords", help="create the passwd file and credentials.toml")
    pw.add_argument("--dir", default="broker/local", help="where to write them")
    pw.add_argument("--rotate", action="store_true", help="generate new passwords for everyone")
    pw.add_argument(
        "--accounts-dir",
        help="also write ACCOUNTS_DIR/<account>/credentials.toml, one account each "
        "and ACCOUNTS_DIR/mosquitto/passwd (least privilege: each service mounts only its own)",
    )
    pw.add_argument(
        "--passwd-owner",
        metavar="UID:GID",
        help="owner of ACCOUNTS_DIR/mosquitto/passwd (the broker's user, e.g. 1883:1883)",
    )
    pw.add_argument(
        "--accounts-owner",
        metavar="UID:GID",
        help="owner of every other ACCOUNTS_DIR/<account> (the services' user, e.g. 10001:10001)",
    )
    pw.add_argument(
        "--acl",
        metavar="FILE",
        help="also copy this ACL to ACCOUNTS_DIR/mosquitto/acl, 0600 and owned as the passwd file",
    )
    pw.set_defaults(func=cmd_passwords)


def _owner(flag: str, value: str | None) -> tuple[int, int] | None:
    if not value:
        return None
    uid, _, gid = value.partition(":")
    if not (uid.isdigit() and gid.isdigit()):
        raise ConfigError(f"{flag} {value!r}: use UID:GID, e.g. 1883:1883")
    return int(uid), int(gid)


def cmd_acl(args: argparse.Namespace) -> int:
    prefix = args.discovery_prefix or os.environ.get("LIFEOPS_HA_DISCOVERY_PREFIX") or ""
    contract = the_contract()
    if prefix:
        contract = with_discovery_prefix(contract, prefix)
    sys.stdout.write(generate_acl(contract))
    return 0


def cmd_passwords(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    accounts = Path(args.accounts_dir) if args.accounts_dir else None
    owner = _owner("--passwd-owner", args.passwd_owner)
    if args.acl and accounts is None:
        raise ConfigError("--acl needs --accounts-dir (the ACL goes to ACCOUNTS_DIR/mosquitto)")
    creds = ensure_accounts(
        directory,
        list(the_contract().meta.principals),
        rotate=args.rotate,
        accounts_dir=accounts,
        passwd_owner=owner,
        accounts_owner=_owner("--accounts-owner", args.accounts_owner),
    )
    if args.acl and accounts is not None:
        install_private(Path(args.acl), accounts / "mosquitto" / "acl", owner)
    print(
        f"{directory / 'passwd'}: {len(creds)} accounts ({', '.join(sorted(creds))}); "
        f"passwords in {directory / 'credentials.toml'}"
    )
    return 0
