"""`lifeops-mesh doctor`: the seed's integration review, automated.

Static checks read the contract, the agents' route tables, the broker ACL, compose.yaml and each
agent's files (`static`, `compose`). Live checks watch a running broker for a bounded time with
the read-only `doctor` account (`live`). The report has the seed's shape (`report`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

from lifeops_mesh.tools.doctor.compose import compose_checks
from lifeops_mesh.tools.doctor.coverage import coverage
from lifeops_mesh.tools.doctor.live import live_checks
from lifeops_mesh.tools.doctor.report import Report, markdown
from lifeops_mesh.tools.doctor.static import flow_diagram, static_checks
from mesh import Contract


def build_report(
    contract: Contract,
    *,
    broker_url: str | None,
    watch_s: float,
    compose: Path | None,
    acl: Path | None,
    tests: Path | None,
) -> Report:
    report = Report(generated_at=dt.datetime.now(dt.UTC), flow=flow_diagram(contract))
    static_checks(contract, report, acl)
    if compose is not None:
        compose_checks(compose, report)
    if broker_url:
        asyncio.run(live_checks(contract, broker_url, watch_s, report))
    if tests is not None and tests.exists():
        # Shown in the coverage table only: a recommended change is something the person
        # running the mesh can act on, and a missing test is not (on a fresh checkout it is
        # the project's, not theirs).
        report.coverage = coverage(contract, tests)
    for f in report.issues:
        report.recommendations.append(f"{f.service}: {f.fix}")
    return report


__all__ = ["Report", "build_report", "markdown"]
