"""The reliability run, short: real processes, every kind of fault once, nothing lost or doubled,
every event recoverable, every retained state equal to the database."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lifeops_mesh.tools.reliability import Timing, run

KINDS = [
    "kill -9 stats",
    "kill -9 lifeops",
    "stats exits after a commit",
    "lifeops exits after a commit",
    "mosquitto restart",
    "mosquitto SIGKILL after a snapshot",
    "mosquitto SIGKILL + 2s outage",
    "SIGSTOP stats 5s",
    "stats database locked 2s",
]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_short_reliability_run_loses_and_doubles_nothing(
    backend: str, tmp_path: Path
) -> None:
    report = await run(
        backend=backend,
        users=4,
        rate=30,
        gap_s=1.0,
        settle_s=2,
        timing=Timing(outage_s=2, hold_s=2),
        work_dir=tmp_path,
        log=lambda _line: None,
    )
    print(report.table())
    names = [f.name for f in report.faults]
    expected = KINDS + (["stats disk full 2s"] if os.geteuid() == 0 else [])
    expected += ["postgresql outage 2s"] if backend == "postgresql" else []
    assert names == expected
    assert report.skipped == ([] if os.geteuid() == 0 else [report.skipped[0]])
    assert report.accepted > 50
    assert report.lost == 0 and report.duplicated == 0
    assert report.expected_xp == report.stored_xp
    assert report.events_committed > 0
    assert report.events_unrecoverable == 0 and report.events_phantom == 0
    assert report.states > 0 and report.states_stale == 0
    assert report.ok
    assert all(f.recovery_s is not None and f.recovery_s < 30 for f in report.faults)
