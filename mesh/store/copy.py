"""Copy one agent's data between stores (SQLite <-> PostgreSQL), verified.

The target gets the source's schema versions by the same migrations (never newer), must hold
no rows in any of the agent's tables, and receives every table the migrations create, runtime
tables included (inbox keys, outbox, receipts, state, dead letters, keys): a request answered
before the move is a duplicate after it. Rows go in batches (keyset order by primary key), all in
one target transaction, so a failed copy leaves the target as empty as it was. Afterwards each
table is compared: row count, the sum of every numeric column (total XP and the like), and an
order-independent digest of all rows. On PostgreSQL, serial and identity sequences are moved
past the copied values.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator, Mapping, Sequence

import msgspec

from mesh.errors import ConfigError
from mesh.store.base import Migration, Row, Store, Tx

BATCH = 2000
_CREATE = re.compile(r"CREATE TABLE (?:IF NOT EXISTS )?\"?(\w+)", re.IGNORECASE)
# Integer columns are summed on both sides (floats are compared by the digest: their sums
# depend on the order of addition).
_INTEGER = "INT"


class TableReport(msgspec.Struct, frozen=True):
    table: str
    rows: int
    sums: dict[str, int]  # integer column -> its total
    digest: str


class Column(msgspec.Struct, frozen=True):
    name: str
    type: str
    pk: int  # position in the primary key, 0: not part of it


def tables_of(
    migrations: Mapping[str, Sequence[Migration]], versions: Mapping[str, int]
) -> list[str]:
    """The tables the migrations up to `versions` create, in creation order."""
    out: list[str] = []
    for component, steps in migrations.items():
        for m in sorted(steps, key=lambda m: m.version):
            if m.version > versions.get(component, 0):
                continue
            for stmt in (*m.sql, *(m.postgresql or ())):
                found = _CREATE.match(stmt.strip())
                if found and found.group(1) not in out:
                    out.append(found.group(1))
    return out


async def table_names(tx: Tx, dialect: str) -> set[str]:
    if dialect == "sqlite":
        rows = await tx.fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")
    else:
        rows = await tx.fetchall(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        )
    return {str(r[0]) for r in rows}


async def columns_of(tx: Tx, dialect: str, table: str) -> list[Column]:
    if dialect == "sqlite":
        rows = await tx.fetchall(f'SELECT name, type, pk FROM pragma_table_info("{table}")')
        return [Column(str(r[0]), str(r[1]).upper(), int(r[2])) for r in rows]
    rows = await tx.fetchall(
        "SELECT c.column_name, upper(c.data_type),"
        " COALESCE((SELECT k.ordinal_position FROM information_schema.key_column_usage k"
        "  JOIN information_schema.table_constraints t ON t.constraint_name = k.constraint_name"
        "  AND t.table_schema = k.table_schema"
        "  WHERE t.constraint_type = 'PRIMARY KEY' AND k.table_schema = c.table_schema"
        "  AND k.table_name = c.table_name AND k.column_name = c.column_name), 0)"
        " FROM information_schema.columns c"
        " WHERE c.table_schema = current_schema() AND c.table_name = ?"
        " ORDER BY c.ordinal_position",
        table,
    )
    return [Column(str(r[0]), str(r[1]), int(r[2])) for r in rows]


async def schema_versions(store: Store) -> dict[str, int]:
    async with store.read() as tx:
        if "schema_migrations" not in await table_names(tx, store.dialect):
            return {}
        rows = await tx.fetchall(
            "SELECT component, MAX(version) FROM schema_migrations GROUP BY component"
        )
    return {str(c): int(v) for c, v in rows}


async def prepare_target(
    source: Store, target: Store, migrations: Mapping[str, Sequence[Migration]]
) -> list[str]:
    """Check both sides and migrate the target to the source's versions; the tables to copy."""
    versions = await schema_versions(source)
    if not versions:
        raise ConfigError(f"{source.url} has no schema_migrations: not an agent's database")
    unknown = sorted(set(versions) - set(migrations))
    if unknown:
        raise ConfigError(f"{source.url} has components this agent does not: {unknown}")
    theirs = await schema_versions(target)
    newer = {c: v for c, v in theirs.items() if v > versions.get(c, 0) and c in migrations}
    if newer:
        raise ConfigError(f"{target.url} has a newer schema than the source: {newer}")
    tables = tables_of(migrations, versions)
    async with target.read() as tx:
        present = await table_names(tx, target.dialect)
        for table in tables:
            if table in present and await tx.fetchone(f"SELECT 1 FROM {table} LIMIT 1"):
                raise ConfigError(
                    f"{target.url} is not empty ({table} has rows): copy into a new, empty database"
                )
    for component, version in versions.items():
        steps = [m for m in migrations[component] if m.version <= version]
        await target.migrate(component, steps)
    return tables


def _digest_add(acc: int, row: Row) -> int:
    values = [bytes(v) if isinstance(v, memoryview | bytearray) else v for v in row]
    h = hashlib.blake2b(msgspec.msgpack.encode(values), digest_size=8).digest()
    return (acc + int.from_bytes(h, "big")) % (1 << 64)


async def _batches(tx: Tx, table: str, cols: list[Column]) -> AsyncIterator[list[Row]]:
    """Every row of `table` (the columns `cols`), BATCH at a time in primary key order."""
    names = ", ".join(c.name for c in cols)
    key = [c for c in sorted(cols, key=lambda c: c.pk) if c.pk]
    if not key:
        yield await tx.fetchall(f"SELECT {names} FROM {table}")
        return
    order = ", ".join(c.name for c in key)
    idx = [cols.index(c) for c in key]
    rows = await tx.fetchall(f"SELECT {names} FROM {table} ORDER BY {order} LIMIT {BATCH}")
    while rows:
        yield rows
        if len(rows) < BATCH:
            return
        last = [rows[-1][i] for i in idx]
        marks = ", ".join("?" for _ in key)
        rows = await tx.fetchall(
            f"SELECT {names} FROM {table} WHERE ({order}) > ({marks})"
            f" ORDER BY {order} LIMIT {BATCH}",
            *last,
        )


async def _copy_table(
    src: Tx, dst: Tx, table: str, cols: list[Column], dialect: str
) -> tuple[int, int]:
    names = ", ".join(c.name for c in cols)
    # PostgreSQL takes the copied values of GENERATED ALWAYS identity columns only when told.
    overriding = " OVERRIDING SYSTEM VALUE" if dialect == "postgresql" else ""
    marks = ", ".join("?" for _ in cols)
    insert = f"INSERT INTO {table} ({names}){overriding} VALUES ({marks})"
    count, digest = 0, 0
    async for rows in _batches(src, table, cols):
        await dst.executemany(insert, rows)
        for row in rows:
            digest = _digest_add(digest, row)
        count += len(rows)
    return count, digest


async def _measure(tx: Tx, table: str, cols: list[Column]) -> TableReport:
    numeric = [c.name for c in cols if _INTEGER in c.type]
    sums = "".join(f", SUM({n})" for n in numeric)
    row = await tx.fetchone(f"SELECT COUNT(*){sums} FROM {table}")
    assert row is not None
    digest = 0
    async for rows in _batches(tx, table, cols):
        for r in rows:
            digest = _digest_add(digest, r)
    totals = {n: int(v or 0) for n, v in zip(numeric, row[1:], strict=True)}
    return TableReport(table, int(row[0]), totals, f"{digest:016x}")


async def _fix_sequences(tx: Tx, tables: list[str]) -> None:
    """Serial and identity columns of the copied tables continue after the copied values."""
    rows = await tx.fetchall(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema()"
        " AND (column_default LIKE 'nextval(%' OR is_identity = 'YES')"
    )
    for table, column in rows:
        if table in tables:
            await tx.fetchone(
                f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'),"
                f" COALESCE(MAX({column}), 0) + 1, false) FROM {table}"
            )


async def copy_store(
    source: Store, target: Store, migrations: Mapping[str, Sequence[Migration]]
) -> list[TableReport]:
    """Copy an agent's tables from `source` to the empty `target`, verified (ConfigError when
    the target is not empty or the copy differs from the source)."""
    tables = await prepare_target(source, target, migrations)
    copied: dict[str, tuple[int, int]] = {}
    async with source.read() as src, target.transaction() as dst:
        for table in tables:
            cols = await columns_of(dst, target.dialect, table)
            theirs = {c.name for c in await columns_of(src, source.dialect, table)}
            if theirs != {c.name for c in cols}:
                raise ConfigError(f"{table}: columns differ: {sorted(theirs)} -> {cols}")
            copied[table] = await _copy_table(src, dst, table, cols, target.dialect)
        if target.dialect == "postgresql":
            await _fix_sequences(dst, tables)
    return await verify(source, target, tables, copied)


async def verify(
    source: Store, target: Store, tables: list[str], copied: Mapping[str, tuple[int, int]]
) -> list[TableReport]:
    """Both sides measured again: counts, numeric totals and digests equal, and equal to what
    was copied (a source written to during the copy fails here)."""
    reports: list[TableReport] = []
    async with source.read() as src, target.read() as dst:
        for table in tables:
            cols = await columns_of(dst, target.dialect, table)
            mine, theirs = await _measure(src, table, cols), await _measure(dst, table, cols)
            count, digest = copied[table]
            if mine != theirs or (theirs.rows, theirs.digest) != (count, f"{digest:016x}"):
                raise ConfigError(
                    f"{table}: the copy differs from the source (source {mine}, copy {theirs}, "
                    f"copied {count} rows): was an agent still writing to the source?"
                )
            reports.append(theirs)
    return reports
