"""A small disk of its own for the Stats database, so a reliability run can fill it: a tmpfs
mounted for the run (root only: mounting needs it; without root the fault is reported as
skipped, never silently left out)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

CHUNK = b"\0" * (1 << 16)


class SmallDisk:
    def __init__(self, mount: Path) -> None:
        self.mount = mount
        self._filler = mount / "filler"

    def fill(self) -> int:
        """Write until the disk is full; returns the bytes written."""
        written = 0
        with self._filler.open("ab", buffering=0) as fh:
            for chunk in (CHUNK, CHUNK[:4096], CHUNK[:512]):  # to the last block
                with contextlib.suppress(OSError):
                    while True:
                        written += fh.write(chunk) or 0
        return written

    def free(self) -> None:
        self._filler.unlink(missing_ok=True)

    def directory(self, name: str, owner: str | None = None) -> Path:
        path = self.mount / name
        path.mkdir(exist_ok=True)
        if owner is not None:
            shutil.chown(path, owner, owner)
        return path


def can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


@contextlib.contextmanager
def small_disk(size_mb: int = 256) -> Iterator[SmallDisk | None]:
    """A tmpfs of `size_mb` for the block, or None when this user cannot mount. Its mount
    point is world-traversable (a PostgreSQL server running as postgres must reach it)."""
    if not can_mount():
        yield None
        return
    mount = Path(tempfile.mkdtemp(prefix="lifeops-disk-"))
    mount.chmod(0o755)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(mount)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    try:
        yield SmallDisk(mount)
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)
        shutil.rmtree(mount, ignore_errors=True)
