"""Static checks: the contract against the agents' route tables, the ACL, each agent's files."""

from __future__ import annotations

import os
from pathlib import Path

from lifeops_mesh import registry
from lifeops_mesh.tools.doctor.report import Finding, Report
from mesh import (
    AgentApp,
    ConfigError,
    Contract,
    ContractError,
    Route,
    TopicEntry,
    build_settings,
)
from mesh.broker.acl import generate_acl
from mesh.dedup import dedup_problems


def build_apps(env: dict[str, str]) -> tuple[dict[str, AgentApp], dict[str, ConfigError]]:
    """Every installed agent's app, built as `run` would with this environment (its rules and
    timeline files); the ones that cannot be built, with the reason."""
    apps: dict[str, AgentApp] = {}
    failed: dict[str, ConfigError] = {}
    for name, build in registry.builders().items():
        try:
            apps[name] = build(build_settings(name, broker_url="mqtt://127.0.0.1:1", env=env))
        except ConfigError as exc:
            failed[name] = exc
    return apps, failed


def flow_diagram(contract: Contract) -> str:
    lines = []
    for key, e in contract.topics.items():
        if e.kind == "reply":
            continue
        pubs = ", ".join(p for p in e.publishers if p != "tester") or "-"
        subs = ", ".join(s for s in e.subscribers if s not in ("tester", "doctor")) or "-"
        arrow = "<=>" if e.reply_schema else "-->"
        lines.append(f"  {pubs:<22} {arrow} {e.topic:<30} {arrow} {subs:<22} [{key}]")
    return "\n".join(lines)


def static_checks(contract: Contract, report: Report, acl: Path | None) -> dict[str, AgentApp]:
    """Add every static finding to `report`; returns the agents' apps (for later checks)."""
    apps, failed = build_apps({k: v for k, v in os.environ.items() if k.startswith("LIFEOPS_")})
    agent_files(report, apps, failed)
    routes = {name: {r.key: r for r in app.routes} for name, app in apps.items()}
    responders(contract, report, routes)
    dedup_keys(contract, report, routes)
    problems = contract.problems()
    report.check(
        "topics.toml is sound (schemas exist, examples validate)",
        not problems,
        "; ".join(problems) or "all entries check out",
    )
    if acl is not None:
        acl_matches(contract, report, acl)
    return apps


def agent_files(report: Report, apps: dict[str, AgentApp], failed: dict[str, ConfigError]) -> None:
    """Each agent's own files (rules, timeline) load: the agent can start."""
    for name in sorted({*apps, *failed}):
        exc = failed.get(name)
        if exc is not None:
            report.add(
                Finding(
                    service=name,
                    issue=str(exc),
                    impact="the agent cannot start",
                    fix="fix the file at the line named",
                )
            )
        report.check(f"{name}: configuration and files load", exc is None, str(exc or "valid"))


def responders(contract: Contract, report: Report, routes: dict[str, dict[str, Route]]) -> None:
    routed = {key for table in routes.values() for key in table}
    missing = [k for k, e in contract.topics.items() if e.kind == "request" and k not in routed]
    for k in missing:
        report.add(
            Finding(
                service=", ".join(contract.entry(k).subscribers),
                issue=f"request topic {contract.entry(k).topic} has no responder in any "
                "agent's route table",
                impact="every request times out",
                fix=f"add a Route('{k}', ...) to the subscribing agent, or remove the entry",
            )
        )
    report.check(
        "every request topic has a responder",
        not missing,
        "all routed" if not missing else f"no responder: {', '.join(missing)}",
    )
    no_timeout = [k for k, e in contract.topics.items() if e.reply_schema and not e.timeout_s]
    report.check(
        "every request/response pair has a timeout",
        not no_timeout,
        "timeout_s set on each" if not no_timeout else ", ".join(no_timeout),
    )
    orphans = [k for k in routed if not contract.entry(k).publishers]
    report.check(
        "every subscribed topic has a publisher",
        not orphans,
        "each has at least one" if not orphans else ", ".join(orphans),
    )


def dedup_keys(contract: Contract, report: Report, routes: dict[str, dict[str, Route]]) -> None:
    """Every routed message's inbox key comes from topics.toml: its `dedup` expression parses and
    names fields of the payload, no route builds keys of its own, and every state-changing event
    claims a key (a redelivery must not count twice)."""
    wrong: list[str] = []
    for table in routes.values():
        for key, route in table.items():
            problem = dedup_problem(contract.entry(key), route)
            if problem is not None:
                issue, fix = problem
                wrong.append(key)
                report.add(
                    Finding(
                        service="/".join(contract.entry(key).subscribers),
                        issue=issue,
                        impact="a redelivered message counts twice, or a message once too few",
                        fix=fix,
                    )
                )
    keyed = sorted(
        {f"{k} {contract.entry(k).dedup}" for t in routes.values() for k in t if k not in wrong}
        - {f"{k} {e.dedup}" for k, e in contract.topics.items() if e.dedup in (None, "none")}
    )
    report.check(
        "every state-changing event has a dedup key",
        not wrong,
        "inbox keys from topics.toml: " + ", ".join(keyed)
        if not wrong
        else ", ".join(dict.fromkeys(wrong)),
    )


def dedup_problem(entry: TopicEntry, route: Route) -> tuple[str, str] | None:
    """What is wrong with the inbox key of one route (issue, fix); None when sound."""
    if entry.kind not in ("event", "request"):
        return None
    fix = "declare `dedup` in topics.toml (grammar in its header)"
    try:
        rule = entry.dedup_rule
    except ContractError as exc:
        return f"{entry.key}: {exc}", fix
    bad = dedup_problems(rule, entry.schema_type)
    if bad:
        return f"{entry.key}: " + "; ".join(bad), "name fields of the payload schema in `dedup`"
    if route.dedup is not None:
        return (
            f"{entry.key}: the route builds its own dedup keys instead of topics.toml's",
            "drop Route(dedup=...) and say the key in topics.toml's `dedup`",
        )
    if entry.kind == "event" and not rule.claims:
        return f"event {entry.key} changes state without a dedup key", fix
    return None


def acl_matches(contract: Contract, report: Report, acl: Path) -> None:
    same = acl.exists() and acl.read_text() == generate_acl(contract)
    if not same:
        report.add(
            Finding(
                service="mosquitto",
                issue=f"{acl} differs from the ACL generated from topics.toml",
                impact="agents are refused (135) or allowed too much",
                fix="lifeops-mesh broker acl > broker/acl",
            )
        )
    report.check(
        "broker ACL matches the contract",
        same,
        "generated and committed agree" if same else "drift",
    )
