"""Where `contract diff` finds a contract: a snapshot file, a topics.toml, or a git revision.

A topics.toml is read with this installation's payload schemas. A git revision is read with its
own: the revision's tree is exported to a temporary directory and a Python started there imports
that tree's `lifeops_contract`, then snapshots it with this installation's snapshot module
(standard library and msgspec only, loaded by path so it cannot clash with the old tree's).
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

from lifeops_contract import contract, load
from lifeops_mesh.tools import contract_snapshot
from lifeops_mesh.tools.contract_snapshot import Snapshot
from mesh import ContractError

_SNAPSHOT_AT = """
import importlib.util, sys
sys.path.insert(0, ".")
spec = importlib.util.spec_from_file_location("_lifeops_contract_snapshot", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = mod
spec.loader.exec_module(mod)
from lifeops_contract import contract
sys.stdout.buffer.write(mod.encode(mod.snapshot(contract())))
"""


def current() -> Snapshot:
    """This installation's contract."""
    return contract_snapshot.snapshot(contract())


def from_file(path: str) -> Snapshot:
    """A snapshot (`.json`, as `contract snapshot` writes it) or a topics.toml."""
    p = Path(path)
    try:
        if p.suffix == ".toml":
            return contract_snapshot.snapshot(load(p))
        return contract_snapshot.decode(p.read_bytes())
    except OSError as exc:
        raise ContractError(f"{path}: {exc.strerror or exc}") from exc
    except ValueError as exc:  # msgspec's DecodeError and ValidationError
        raise ContractError(f"{path}: not a contract snapshot ({exc})") from exc


def at_revision(ref: str, repo: Path | None = None, timeout: float = 120.0) -> Snapshot:
    """The contract of git revision `ref` of the repository around `repo` (default: cwd)."""
    where = str(repo or Path.cwd())
    try:
        archive = subprocess.run(
            ["git", "-C", where, "archive", "--format=tar", ref],
            capture_output=True,
            check=True,
            timeout=timeout,
        ).stdout
    except FileNotFoundError as exc:
        raise ContractError("contract diff --against needs git on the PATH") from exc
    except subprocess.CalledProcessError as exc:
        why = exc.stderr.decode(errors="replace").strip()
        raise ContractError(f"no git revision {ref!r} in {where}: {why}") from exc
    with tempfile.TemporaryDirectory(prefix="lifeops-contract-") as tmp:
        with tarfile.open(fileobj=BytesIO(archive)) as tar:
            tar.extractall(tmp, filter="data")
        if not (Path(tmp) / "lifeops_contract").is_dir():
            raise ContractError(f"{ref} has no lifeops_contract package to read a contract from")
        done = subprocess.run(
            [sys.executable, "-c", _SNAPSHOT_AT, contract_snapshot.__file__],
            cwd=tmp,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:]
        raise ContractError(f"could not load the contract of {ref}: {' '.join(tail)}")
    return contract_snapshot.decode(done.stdout)
