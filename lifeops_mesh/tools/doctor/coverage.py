"""Which test files exercise each integration point (by contract key or topic)."""

from __future__ import annotations

import re
from pathlib import Path

from lifeops_mesh.tools.doctor.report import Coverage
from mesh import Contract

CONTRACT_SUITES = ("lifeops_contract", "deploy")  # tests/<package>/ that check the contract


def _kind(path: Path, tests: Path, text: str) -> str:
    if "hypothesis" in text:
        return "property"
    if path.relative_to(tests).parts[0] in CONTRACT_SUITES:
        return "contract"
    if "broker" in text:
        return "integration"
    return "unit"


def coverage(contract: Contract, tests: Path) -> list[Coverage]:
    files = {p: p.read_text(errors="replace") for p in sorted(tests.rglob("test_*.py"))}
    out = []
    for key, e in contract.topics.items():
        cov = Coverage(integration_point=f"{e.topic} ({key})")
        pattern = re.compile(rf"\b{re.escape(key)}\b|{re.escape(e.topic.split('{')[0])}")
        for path, text in files.items():
            if pattern.search(text):
                getattr(cov, _kind(path, tests, text)).append(path.relative_to(tests).as_posix())
        out.append(cov)
    return out
