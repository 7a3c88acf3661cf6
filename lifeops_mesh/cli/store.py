"""`lifeops-mesh store copy`: move one agent's data between SQLite and PostgreSQL."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from pathlib import Path

from lifeops_mesh import registry
from lifeops_mesh.cli.common import Subparsers
from mesh import (
    RUNTIME_MIGRATIONS,
    ConfigError,
    Migration,
    build_settings,
    open_store,
    parse_db_url,
)
from mesh.store.copy import TableReport, copy_store


def register(sub: Subparsers) -> None:
    store = sub.add_parser("store", help="an agent's database").add_subparsers(
        dest="what", required=True
    )
    p = store.add_parser("copy", help="copy an agent's data into a new, empty database (verified)")
    p.add_argument("--agent", required=True, choices=registry.names())
    p.add_argument("--from", dest="source", required=True, help="the agent's database URL now")
    p.add_argument("--to", dest="target", required=True, help="an empty database to copy into")
    p.set_defaults(func=cmd_copy)


def migrations_of(agent: str) -> dict[str, Sequence[Migration]]:
    """The schema components of `agent`: the runtime's tables, its own and the other components
    its app declares (the user-id registry)."""
    settings = build_settings(agent, broker_url="mqtt://127.0.0.1:1", db_url="sqlite://", env={})
    app = registry.build(settings)
    return {**RUNTIME_MIGRATIONS, agent: app.migrations, **app.components}


async def copy(agent: str, source_url: str, target_url: str) -> list[TableReport]:
    parsed = parse_db_url(source_url)
    if parsed.dialect == "sqlite" and not await asyncio.to_thread(Path(parsed.target).exists):
        raise ConfigError(f"no database at {parsed.target} (--from)")
    async with open_store(source_url) as source, open_store(target_url) as target:
        return await copy_store(source, target, migrations_of(agent))


def cmd_copy(args: argparse.Namespace) -> int:
    reports = asyncio.run(copy(args.agent, args.source, args.target))
    for r in reports:
        sums = "".join(f", {k} {v}" for k, v in r.sums.items() if v)
        print(f"{r.table}: {r.rows} rows{sums}")
    rows = sum(r.rows for r in reports)
    print(
        f"copied {rows} rows of {args.agent} in {len(reports)} tables; counts, totals and "
        f"row digests equal in both. Run {args.agent} with --db on the new database."
    )
    return 0
