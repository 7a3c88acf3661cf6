"""compose.yaml checks: the Compose specification, health checks, start order, network, and
every agent scraped by Prometheus."""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lifeops_mesh.tools.doctor.report import Finding, Report

# The parser is in the `test` extra, not a dependency: a command that installs it into the
# environment lifeops-mesh runs in (a checkout's .venv, a pipx venv, or any other).
EXTRA_HINT = (
    "install the Compose-spec parser where lifeops-mesh runs: "
    f"{shlex.quote(sys.executable)} -m pip install 'compose-spec>=0.2'"
)
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's variable interpolation (`${VAR}`, `${VAR:-default}`, `${VAR-default}`, `$$`),
    done before the file is checked, as `docker compose` does."""

    def value(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, default = m.group(1), m.group(2)
        got = env.get(name)
        if got is None or (got == "" and ":-" in m.group(0)):
            return default or ""
        return got

    return _VAR.sub(value, text)


def load_spec(path: Path, report: Report) -> dict[str, Any] | None:
    """compose.yaml parsed and checked against the Compose specification; None (with a
    finding) when it cannot be."""
    try:
        import compose_spec
    except ImportError:
        report.add(
            Finding(
                service="compose",
                issue=f"{path} not checked: the Compose-spec parser is not installed",
                impact="compose problems go unnoticed",
                fix=EXTRA_HINT,
                severity="warning",
            )
        )
        return None
    try:
        c = compose_spec.PyCompose.from_yaml(interpolate(path.read_text(), os.environ))
        c.to_spec()
        spec: dict[str, Any] = c.to_dict()
    except (OSError, ValueError) as exc:
        report.add(
            Finding(
                service="compose",
                issue=f"{path}: {exc}",
                impact="docker compose refuses the file",
                fix="fix the key named",
            )
        )
        return None
    return spec


def compose_checks(path: Path, report: Report) -> None:
    spec = load_spec(path, report)
    if spec is None:
        return
    services: dict[str, dict[str, Any]] = spec.get("services", {})
    scrape = path.parent / "deploy" / "prometheus.yml"
    scrape_text = scrape.read_text() if scrape.exists() else ""
    ok = {"hc": True, "dep": True, "net": True, "scrape": True}
    for name, svc in services.items():
        ok["hc"] &= _health_check(name, svc, report)
        ok["dep"] &= _start_order(name, svc, services, report)
        ok["net"] &= _network(name, svc, report)
        ok["scrape"] &= _scraped(name, svc, scrape_text, report)
    for check, key in (
        ("compose: every service has a health check", "hc"),
        ("compose: depends_on waits for health", "dep"),
        ("compose: one network", "net"),
        ("compose: every agent is scraped", "scrape"),
    ):
        report.check(check, ok[key], "yes" if ok[key] else "see issues")


def _health_check(name: str, svc: dict[str, Any], report: Report) -> bool:
    hc = svc.get("healthcheck") or {}
    if svc.get("restart") == "no" or (hc.get("test") and not hc.get("disable")):
        return True
    report.add(
        Finding(
            service=name,
            issue="no health check",
            impact="dependants start before it works; failures go unnoticed",
            fix="add a healthcheck",
        )
    )
    report.compose_updates.append(f"{name}: add a healthcheck")
    return False


def _start_order(
    name: str, svc: dict[str, Any], services: dict[str, dict[str, Any]], report: Report
) -> bool:
    ok = True
    for dep, cond in (svc.get("depends_on") or {}).items():
        if dep in services and (
            services[dep].get("restart") == "no" or cond.get("condition") == "service_healthy"
        ):
            continue
        ok = False
        report.add(
            Finding(
                service=name,
                issue=f"depends_on {dep} without condition: service_healthy"
                if dep in services
                else f"depends on missing service {dep}",
                impact="start order races",
                fix="condition: service_healthy",
            )
        )
        report.compose_updates.append(f"{name}: depends_on {dep}: service_healthy")
    return ok


def _network(name: str, svc: dict[str, Any], report: Report) -> bool:
    nets = svc.get("networks")
    if nets == ["mesh"] or (isinstance(nets, dict) and list(nets) == ["mesh"]):
        return True
    report.add(
        Finding(
            service=name,
            issue="not on the mesh network",
            impact="cannot reach the broker",
            fix="networks: [mesh]",
            severity="warning",
        )
    )
    return False


def _scraped(name: str, svc: dict[str, Any], scrape_text: str, report: Report) -> bool:
    cmd = svc.get("command") or []
    if len(cmd) < 2 or cmd[0] != "run":
        return True
    port = str((svc.get("environment") or {}).get("LIFEOPS_METRICS_PORT", ""))
    if f"{name}:{port}" in scrape_text:
        return True
    # found by DNS service discovery under a network alias (instances that run only sometimes)
    if f"port: {port}" in scrape_text and any(f'"{a}"' in scrape_text for a in _aliases(svc)):
        return True
    report.add(
        Finding(
            service=name,
            issue="agent not scraped by Prometheus",
            impact="no metrics, no alerts",
            fix=f"add {name}:{port} to deploy/prometheus.yml",
            severity="warning",
        )
    )
    return False


def _aliases(svc: dict[str, Any]) -> list[str]:
    nets = svc.get("networks")
    if not isinstance(nets, dict):
        return []
    return [str(a) for net in nets.values() for a in ((net or {}).get("aliases") or [])]
