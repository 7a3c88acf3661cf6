"""The reliability run, short: real processes, every kind of fault, nothing lost or doubled."""

from __future__ import annotations

from pathlib import Path

import pytest

from lifeops_mesh.tools.reliability import run


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_short_reliability_run_loses_and_doubles_nothing(
    backend: str, tmp_path: Path
) -> None:
    """kill -9 of Stats and LifeOps, a broker restart, a broker outage (and a PostgreSQL outage):
    every accepted request is in Stats exactly once, and each part recovers."""
    report = await run(
        backend=backend,
        users=4,
        rate=30,
        gap_s=1.5,
        settle_s=2,
        outage_s=2,
        kills=1,
        work_dir=tmp_path,
        log=lambda _line: None,
    )
    print(report.table())
    assert report.accepted > 50
    assert report.lost == 0 and report.duplicated == 0
    assert report.expected_xp == report.stored_xp
    expected_faults = 5 if backend == "postgresql" else 4
    assert len(report.faults) == expected_faults
    assert all(f.recovery_s is not None and f.recovery_s < 30 for f in report.faults)
