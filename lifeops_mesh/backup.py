"""Backups of an `up` data directory while the mesh runs, and their restore.

An archive is one tar file: `manifest.json` (versions, agents, schema versions, row counts,
a SHA-256 per file), `databases/<agent>.db` per agent on SQLite and `broker/...` (the
credentials, the Mosquitto password file, ACL, config and persistence).

Each database is copied with SQLite's online backup API in one step: the copy is the database
as one read transaction saw it, what the WAL holds included, while the agents keep writing
(in WAL mode a reader never blocks a writer). The agents are copied senders first, in reverse
start order (LifeOps before Stats): a receipt LifeOps stored means Stats committed the request
before, so Stats' later copy holds it; a request LifeOps still waits on is sent again after a
restore and Stats answers it once (a duplicate if its copy has it).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import io
import os
import platform
import sqlite3
import tarfile
import tempfile
from pathlib import Path

import msgspec

from lifeops_mesh import __version__, registry
from lifeops_mesh.local import DataDirLock
from mesh import ConfigError, build_settings, parse_db_url

FORMAT = 1
MANIFEST = "manifest.json"
# What `up` keeps in DATA/broker beside the logs: passwords, hashes, ACL, config, persistence.
BROKER_FILES = ("credentials.toml", "passwd", "acl", "mosquitto.conf")
PG_RECIPE = (
    "its store is PostgreSQL: back it up with `pg_dump --format=custom` and restore with "
    "`pg_restore` (docs/operations.md, Backup, restore, move)"
)


class FileEntry(msgspec.Struct, frozen=True):
    path: str  # inside the archive and under the data dir
    sha256: str
    size: int


class DatabaseEntry(msgspec.Struct, frozen=True):
    agent: str
    file: FileEntry
    schema: dict[str, int]  # component -> schema version
    rows: dict[str, int]  # table -> rows


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    format: int = FORMAT
    created_at: str
    lifeops_mesh: str
    sqlite: str
    python: str
    databases: list[DatabaseEntry]
    files: list[FileEntry]
    skipped: dict[str, str] = {}  # agent -> why its data is not in the archive


def agent_db_urls(data: Path) -> dict[str, str]:
    """Agent -> the database URL `up` gives it in `data`, senders first (reverse start order)."""
    settings = [build_settings(n, broker_url="mqtt://127.0.0.1:1", data_dir=data) for n in
                registry.names()]  # fmt: skip
    urls = {s.agent: s.db_url for s in settings}
    apps = registry.start_order([registry.build(s) for s in settings])
    return {app.name: urls[app.name] for app in reversed(apps)}


def snapshot_entry(agent: str, src: Path, stage: Path) -> DatabaseEntry:
    name = f"databases/{agent}.db"
    schema, rows = sqlite_snapshot(src, stage / name)
    return DatabaseEntry(agent, file_entry(stage / name, name), schema, rows)


def sqlite_snapshot(src: Path, dst: Path) -> tuple[dict[str, int], dict[str, int]]:
    """Copy the database `src` to `dst` (new, 0600) with the online backup API in one step;
    returns the copy's (schema versions, rows per table)."""
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    source = sqlite3.connect(src, timeout=30)  # only reads (read-only WAL needs its -shm)
    target = sqlite3.connect(dst)
    try:
        source.backup(target)  # pages=-1: all of it under one read transaction
        check = target.execute("PRAGMA quick_check").fetchone()
        if check != ("ok",):
            raise ConfigError(f"the copy of {src} fails SQLite's check: {check}")
        return schema_versions(target), row_counts(target)
    finally:
        source.close()
        target.close()


def schema_versions(conn: sqlite3.Connection) -> dict[str, int]:
    rows = conn.execute(
        "SELECT component, MAX(version) FROM schema_migrations GROUP BY component"
    ).fetchall()
    return {str(c): int(v) for c, v in rows}


def row_counts(conn: sqlite3.Connection) -> dict[str, int]:
    tables = [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        " ORDER BY name"
    )]  # fmt: skip
    return {t: int(conn.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0]) for t in tables}


def file_entry(path: Path, name: str) -> FileEntry:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return FileEntry(path=name, sha256=digest.hexdigest(), size=path.stat().st_size)


async def take_backup(data: Path, out: Path) -> Manifest:
    """Back up the `up` installation in `data` into the new archive `out` (0600)."""
    sources, skipped = await asyncio.to_thread(plan, data, out)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".lifeops-backup-") as tmp:
        stage = Path(tmp)  # mkdtemp: 0700
        (stage / "databases").mkdir()
        databases = [  # one after the other, senders first
            await asyncio.to_thread(snapshot_entry, agent, src, stage)
            for agent, src in sources.items()
        ]
        files = await asyncio.to_thread(_stage_broker, data / "broker", stage)
        manifest = Manifest(
            created_at=dt.datetime.now(dt.UTC).isoformat(),
            lifeops_mesh=__version__,
            sqlite=sqlite3.sqlite_version,
            python=platform.python_version(),
            databases=databases,
            files=files,
            skipped=skipped,
        )
        await asyncio.to_thread(_write_archive, stage, manifest, out)
    return manifest


def plan(data: Path, out: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """The SQLite file of each agent to copy, senders first, and why the others are not."""
    if out.exists():
        raise ConfigError(f"{out} exists: choose another --out (a backup never overwrites)")
    sources: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    for agent, url in agent_db_urls(data).items():
        parsed = parse_db_url(url)
        if parsed.dialect == "postgresql":
            skipped[agent] = PG_RECIPE
        elif not Path(parsed.target).exists():
            skipped[agent] = f"no database yet ({parsed.target})"
        else:
            sources[agent] = Path(parsed.target)
    if not sources and not (data / "broker").is_dir():
        raise ConfigError(f"nothing to back up in {data}: no agent database, no broker state")
    out.parent.mkdir(parents=True, exist_ok=True)
    return sources, skipped


def _stage_broker(broker: Path, stage: Path) -> list[FileEntry]:
    """Copies of the broker's files; Mosquitto replaces its persistence file by a rename, so
    an open file is a whole snapshot."""
    names = [f"broker/{n}" for n in BROKER_FILES if (broker / n).exists()]
    persistence = broker / "persistence"
    if persistence.is_dir():
        names += [f"broker/persistence/{p.name}" for p in sorted(persistence.iterdir())
                  if p.is_file() and not p.name.endswith(".new")]  # fmt: skip
    out = []
    for name in names:
        target = stage / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with (broker.parent / name).open("rb") as src:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
        out.append(file_entry(target, name))
    return out


def _write_archive(stage: Path, manifest: Manifest, out: Path) -> None:
    tmp = out.with_name(out.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        with tarfile.open(fileobj=fh, mode="w") as tar:
            body = msgspec.json.format(msgspec.json.encode(manifest))
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mode = len(body), 0o600
            info.mtime = int(dt.datetime.now(dt.UTC).timestamp())
            tar.addfile(info, io.BytesIO(body))
            for entry in [*(d.file for d in manifest.databases), *manifest.files]:
                tar.add(stage / entry.path, arcname=entry.path, recursive=False)
        fh.flush()  # the tar's end blocks included
        os.fsync(fh.fileno())
    tmp.replace(out)
    out.chmod(0o600)


# -- restore ------------------------------------------------------------------------------------


def read_manifest(tar: tarfile.TarFile) -> Manifest:
    member = tar.extractfile(MANIFEST)
    if member is None:
        raise ConfigError(f"not a lifeops-mesh backup: no {MANIFEST}")
    try:
        manifest = msgspec.json.decode(member.read(), type=Manifest)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"not a lifeops-mesh backup: {MANIFEST}: {exc}") from exc
    if manifest.format != FORMAT:
        raise ConfigError(f"backup format {manifest.format}; this version reads {FORMAT}")
    return manifest


def is_empty(data: Path) -> bool:
    return not data.exists() or not any(
        p.name != DataDirLock(data).path.name for p in data.iterdir()
    )


def restore(archive: Path, data: Path, *, overwrite: bool = False) -> Manifest:
    """Restore `archive` into `data`: refused when `data` holds anything unless `overwrite`,
    and while a `lifeops-mesh up` runs on it. Everything is unpacked and checked (checksums,
    row counts) beside the data first, then moved into place: a damaged archive changes
    nothing. Files 0600, directories 0700."""
    if not is_empty(data) and not overwrite:
        raise ConfigError(
            f"{data} is not empty: restore into an empty directory, or pass --overwrite to "
            "replace the databases and broker files it holds"
        )
    old = os.umask(0o077)
    try:
        data.mkdir(parents=True, exist_ok=True)
        data.chmod(0o700)
        lock = DataDirLock(data)
        lock.acquire()
        try:
            with tempfile.TemporaryDirectory(dir=data, prefix=".restore-") as tmp:
                manifest = _unpack(archive, Path(tmp))
                for entry in [*(d.file for d in manifest.databases), *manifest.files]:
                    _install(Path(tmp) / entry.path, data / _place(entry.path))
        finally:
            lock.release()
    finally:
        os.umask(old)
    return manifest


def _unpack(archive: Path, stage: Path) -> Manifest:
    try:
        with tarfile.open(archive, mode="r:") as tar:
            manifest = read_manifest(tar)
            for entry in [*(d.file for d in manifest.databases), *manifest.files]:
                _extract(tar, entry, stage)
    except (tarfile.TarError, KeyError) as exc:
        raise ConfigError(f"{archive}: not a complete lifeops-mesh backup: {exc}") from exc
    for db in manifest.databases:
        conn = sqlite3.connect(stage / db.file.path)
        try:
            rows = row_counts(conn)
        finally:
            conn.close()
        if rows != db.rows:
            raise ConfigError(f"{db.agent}: restored rows {rows} differ from the manifest")
    return manifest


def _place(path: str) -> Path:
    """Where an archive path goes in the data dir: databases/x.db -> x.db, broker/... as is."""
    parts = Path(path).parts
    if Path(path).is_absolute() or ".." in parts or parts[0] not in ("databases", "broker"):
        raise ConfigError(f"refusing archive path {path!r}")
    return Path(*parts[1:]) if parts[0] == "databases" else Path(path)


def _extract(tar: tarfile.TarFile, entry: FileEntry, stage: Path) -> None:
    _place(entry.path)
    member = tar.getmember(entry.path)
    src = tar.extractfile(member) if member.isfile() else None
    if src is None:
        raise ConfigError(f"{entry.path} in the archive is not a regular file")
    target = stage / entry.path
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as dst:
        while chunk := src.read(1 << 20):
            digest.update(chunk)
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    if digest.hexdigest() != entry.sha256:
        raise ConfigError(f"{entry.path}: checksum differs from the manifest (damaged archive)")


def _install(staged: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if staged.parent.name == "databases":  # the WAL of a database it replaces must go too
        for suffix in ("-wal", "-shm", "-journal"):
            target.with_name(target.name + suffix).unlink(missing_ok=True)
    staged.replace(target)
