"""`lifeops-mesh broker acl|passwords|accounts`: the broker's ACL and accounts."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from lifeops_contract import with_discovery_prefix
from lifeops_mesh.cli.common import Subparsers, the_contract
from lifeops_mesh.tools import broker_accounts
from mesh import ConfigError, Contract
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
    _register_accounts(broker)


def _register_accounts(broker: Subparsers) -> None:
    acc = broker.add_parser(
        "accounts", help="the mesh's accounts and ACL for a broker you already run"
    )
    acc.add_argument(
        "--for",
        dest="target",
        required=True,
        choices=broker_accounts.TARGETS,
        help="mosquitto-addon: Home Assistant's Mosquitto broker app; mosquitto: any other",
    )
    acc.add_argument(
        "--credentials",
        default="data/mesh-accounts.toml",
        metavar="FILE",
        help="where the accounts' passwords are kept (and reused when it exists; default "
        "%(default)s): give it to `up --credentials`",
    )
    acc.add_argument("--out", metavar="DIR", help="write the files into DIR instead of printing")
    acc.add_argument(
        "--folder",
        default="mosquitto",
        help="the Mosquitto app's customize folder under /share (default %(default)s)",
    )
    acc.add_argument(
        "--ha-user",
        default="homeassistant",
        help="mosquitto: the account Home Assistant's MQTT integration uses (default %(default)s)",
    )
    acc.add_argument(
        "--full-access",
        action="append",
        default=[],
        metavar="USER",
        help="another user of the broker that keeps every topic (repeatable)",
    )
    acc.add_argument(
        "--discovery-prefix",
        help="Home Assistant's discovery prefix when not `homeassistant` "
        "(default: LIFEOPS_HA_DISCOVERY_PREFIX)",
    )
    acc.set_defaults(func=cmd_accounts)


def _contract(args: argparse.Namespace) -> Contract:
    prefix = args.discovery_prefix or os.environ.get("LIFEOPS_HA_DISCOVERY_PREFIX") or ""
    contract = the_contract()
    return with_discovery_prefix(contract, prefix) if prefix else contract


def _owner(flag: str, value: str | None) -> tuple[int, int] | None:
    if not value:
        return None
    uid, _, gid = value.partition(":")
    if not (uid.isdigit() and gid.isdigit()):
        raise ConfigError(f"{flag} {value!r}: use UID:GID, e.g. 1883:1883")
    return int(uid), int(gid)


def cmd_acl(args: argparse.Namespace) -> int:
    sys.stdout.write(generate_acl(_contract(args)))
    return 0


def cmd_accounts(args: argparse.Namespace) -> int:
    contract = _contract(args)
    credentials = Path(args.credentials)
    for user in args.full_access:
        if not user or any(c.isspace() for c in user):
            raise ConfigError(f"--full-access {user!r}: a broker user name, without spaces")
    if args.target == "mosquitto-addon":
        accounts = broker_accounts.for_addon(
            contract, credentials, folder=args.folder, full_access=args.full_access
        )
    else:
        if not args.out:
            raise ConfigError("--for mosquitto writes files: give --out DIR")
        accounts = broker_accounts.for_mosquitto(
            contract,
            credentials,
            out=Path(args.out),
            ha_user=args.ha_user,
            full_access=args.full_access,
        )
    if args.out:
        for path in broker_accounts.write(accounts, Path(args.out)):
            print(f"wrote {path}")
        print("\n".join(f"{n}. {step}" for n, step in enumerate(accounts.steps, 1)))
    else:
        sys.stdout.write(broker_accounts.render(accounts, args.target))
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
