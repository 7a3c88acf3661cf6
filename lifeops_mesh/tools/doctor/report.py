"""The doctor's report in the seed's shape: current flow, issues found, contract validation,
recommended changes, test coverage per integration point, compose updates."""

from __future__ import annotations

import datetime as dt
from typing import Literal

import msgspec

Severity = Literal["critical", "warning"]


class Finding(msgspec.Struct, kw_only=True):
    service: str
    issue: str
    impact: str
    fix: str
    severity: Severity = "critical"


class CheckItem(msgspec.Struct, kw_only=True):
    check: str
    ok: bool
    why: str


class Coverage(msgspec.Struct, kw_only=True):
    integration_point: str
    unit: list[str] = []
    integration: list[str] = []
    contract: list[str] = []
    property: list[str] = []


class Report(msgspec.Struct, kw_only=True):
    generated_at: dt.datetime
    flow: str
    issues: list[Finding] = []
    checklist: list[CheckItem] = []
    recommendations: list[str] = []
    coverage: list[Coverage] = []
    compose_updates: list[str] = []
    watched_s: float = 0.0

    @property
    def critical(self) -> bool:
        return any(f.severity == "critical" for f in self.issues)

    def add(self, finding: Finding) -> None:
        self.issues.append(finding)

    def check(self, check: str, ok: bool, why: str) -> None:
        self.checklist.append(CheckItem(check=check, ok=ok, why=why))


def markdown(r: Report) -> str:
    out = [
        "# Integration Analysis",
        "",
        f"Generated {r.generated_at:%Y-%m-%d %H:%M} UTC"
        + (f", watched the broker for {r.watched_s:g} s" if r.watched_s else ""),
        "",
        "## Current flow",
        "",
        "```",
        r.flow,
        "```",
        "",
        "## Issues Found",
        "",
    ]
    if r.issues:
        out += ["| Service | Issue | Impact | Fix | Severity |", "|---|---|---|---|---|"]
        out += [
            f"| {f.service} | {f.issue} | {f.impact} | {f.fix} | {f.severity} |" for f in r.issues
        ]
    else:
        out.append("None.")
    out += ["", "## Contract validation", ""]
    out += [f"- [{'x' if c.ok else ' '}] {c.check}: {c.why}" for c in r.checklist]
    out += ["", "## Recommended changes", ""]
    out += [f"- {x}" for x in r.recommendations] or ["- none"]
    out += [
        "",
        "## Test coverage",
        "",
        "| Integration point | Unit | Integration | Contract | Property |",
        "|---|---|---|---|---|",
    ]
    out += [
        f"| {c.integration_point} | {', '.join(c.unit) or '-'} | "
        f"{', '.join(c.integration) or '-'} | {', '.join(c.contract) or '-'} | "
        f"{', '.join(c.property) or '-'} |"
        for c in r.coverage
    ]
    out += ["", "## Compose updates", ""]
    out += [f"- {x}" for x in r.compose_updates] or ["- none"]
    return "\n".join(out) + "\n"
