"""`lifeops-mesh doctor`: the seed's integration review, automated.

Static checks read the contract, the agents' route tables, the broker ACL, compose.yaml and the
rules and timeline files. Live checks watch a running broker for a bounded time with the
read-only `doctor` account. The report has the seed's shape: current flow, issues found,
contract validation, recommended changes, test coverage, compose updates.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from pathlib import Path
from typing import Literal

import msgspec

from mesh import codec
from mesh.contract import Contract
from mesh.errors import ConfigError, DecodeError, MeshError
from mesh.settings import build_settings

ROOT = Path(__file__).resolve().parent.parent.parent
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


# -- static ------------------------------------------------------------------------------------


def _routes() -> dict[str, dict[str, object]]:
    """agent -> {contract key -> Route} for the agents of this version."""
    from mesh.cli import BUILDERS

    out: dict[str, dict[str, object]] = {}
    for name, build in BUILDERS.items():
        app = build(build_settings(name, broker_url="mqtt://127.0.0.1:1", env={}))
        out[name] = {r.key: r for r in app.routes}
    return out


def flow_diagram(contract: Contract) -> str:
    lines = []
    for key, e in contract.topics.items():
        if e.kind in ("reply",):
            continue
        pubs = ", ".join(p for p in e.publishers if p != "tester") or "-"
        subs = ", ".join(s for s in e.subscribers if s not in ("tester", "doctor")) or "-"
        arrow = "<=>" if e.reply_schema else "-->"
        lines.append(f"  {pubs:<22} {arrow} {e.topic:<30} {arrow} {subs:<22} [{key}]")
    return "\n".join(lines)


def static_checks(
    contract: Contract, report: Report, compose: Path | None, acl: Path | None
) -> None:
    routes = _routes()
    routed = {key for table in routes.values() for key in table}
    add = report.issues.append
    items = report.checklist.append

    # Every request has a responder and a timeout.
    missing = [k for k, e in contract.topics.items() if e.kind == "request" and k not in routed]
    for k in missing:
        add(
            Finding(
                service=", ".join(contract.entry(k).subscribers),
                issue=f"request topic "
                f"{contract.entry(k).topic} has no responder in any agent's route table",
                impact="every request times out",
                fix=f"add a Route('{k}', ...) to the subscribing agent, or remove the entry",
            )
        )
    items(
        CheckItem(
            check="every request topic has a responder",
            ok=not missing,
            why="all routed" if not missing else f"no responder: {', '.join(missing)}",
        )
    )
    no_timeout = [k for k, e in contract.topics.items() if e.reply_schema and not e.timeout_s]
    items(
        CheckItem(
            check="every request/response pair has a timeout",
            ok=not no_timeout,
            why="timeout_s set on each" if not no_timeout else ", ".join(no_timeout),
        )
    )
    # Every subscribed (routed) topic has a publisher.
    orphans = [k for k in routed if not contract.entry(k).publishers]
    items(
        CheckItem(
            check="every subscribed topic has a publisher",
            ok=not orphans,
            why="each has at least one" if not orphans else ", ".join(orphans),
        )
    )
    # State-changing events are deduplicated.
    undeduped = []
    for table in routes.values():
        for key, route in table.items():
            e = contract.entry(key)
            if e.kind == "event" and (e.dedup is None or getattr(route, "dedup", None) is None):
                undeduped.append(key)
    for k in undeduped:
        add(
            Finding(
                service="/".join(contract.entry(k).subscribers),
                issue=f"event {k} changes state without a dedup key",
                impact="a redelivered message counts twice",
                fix="declare `dedup` in topics.toml and pass Route(dedup=...)",
            )
        )
    items(
        CheckItem(
            check="every state-changing event has a dedup key",
            ok=not undeduped,
            why="inbox keys declared and used" if not undeduped else ", ".join(undeduped),
        )
    )
    # Contract soundness.
    problems = contract.problems()
    items(
        CheckItem(
            check="topics.toml is sound (schemas exist, examples validate)",
            ok=not problems,
            why="; ".join(problems) or "all entries check out",
        )
    )
    # Broker ACL.
    if acl is not None:
        from mesh.broker.acl import generate_acl

        same = acl.exists() and acl.read_text() == generate_acl(contract)
        if not same:
            add(
                Finding(
                    service="mosquitto",
                    issue=f"{acl} differs from the ACL generated from topics.toml",
                    impact="agents are refused (135) or allowed too much",
                    fix="lifeops-mesh broker acl > broker/acl",
                )
            )
        items(
            CheckItem(
                check="broker ACL matches the contract",
                ok=same,
                why="generated and committed agree" if same else "drift",
            )
        )
    # Rules and timeline files.
    for name, loader in (
        ("stats rules", "stats_agent.rules:load_rules"),
        ("lifeops timeline", "lifeops_agent.timeline:load_timeline"),
    ):
        mod, fn = loader.split(":")
        try:
            getattr(__import__(mod, fromlist=[fn]), fn)()
            items(CheckItem(check=f"{name} file loads", ok=True, why="valid"))
        except ConfigError as exc:
            add(
                Finding(
                    service=name.split()[0],
                    issue=str(exc),
                    impact="the agent cannot start",
                    fix="fix the file at the line named",
                )
            )
            items(CheckItem(check=f"{name} file loads", ok=False, why=str(exc)))
    if compose is not None:
        compose_checks(compose, routes, report)


def compose_checks(path: Path, routes: dict[str, dict[str, object]], report: Report) -> None:
    import compose_spec

    try:
        c = compose_spec.PyCompose.from_yaml(path.read_text())
        c.to_spec()
        spec = c.to_dict()
    except (OSError, ValueError) as exc:
        report.issues.append(
            Finding(
                service="compose",
                issue=f"{path}: {exc}",
                impact="docker compose refuses the file",
                fix="fix the key named",
            )
        )
        return
    services = spec.get("services", {})
    scrape = path.parent / "deploy" / "prometheus.yml"
    scrape_text = scrape.read_text() if scrape.exists() else ""
    ok_hc = ok_dep = ok_net = ok_scrape = True
    for name, svc in services.items():
        hc = svc.get("healthcheck") or {}
        if svc.get("restart") != "no" and (not hc.get("test") or hc.get("disable")):
            ok_hc = False
            report.issues.append(
                Finding(
                    service=name,
                    issue="no health check",
                    impact="dependants start before it works; failures go unnoticed",
                    fix="add a healthcheck",
                )
            )
            report.compose_updates.append(f"{name}: add a healthcheck")
        for dep, cond in (svc.get("depends_on") or {}).items():
            if dep not in services or (
                services[dep].get("restart") != "no" and cond.get("condition") != "service_healthy"
            ):
                ok_dep = False
                report.issues.append(
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
        if svc.get("networks") not in (["mesh"], {"mesh": None}, {"mesh": {}}):
            ok_net = False
            report.issues.append(
                Finding(
                    service=name,
                    issue="not on the mesh network",
                    impact="cannot reach the broker",
                    fix="networks: [mesh]",
                    severity="warning",
                )
            )
        cmd = svc.get("command") or []
        if len(cmd) >= 2 and cmd[0] == "run":
            port = str((svc.get("environment") or {}).get("LIFEOPS_METRICS_PORT", ""))
            if f"{name}:{port}" not in scrape_text:
                ok_scrape = False
                report.issues.append(
                    Finding(
                        service=name,
                        issue="agent not scraped by Prometheus",
                        impact="no metrics, no alerts",
                        fix=f"add {name}:{port} to deploy/prometheus.yml",
                        severity="warning",
                    )
                )
    for check, ok in (
        ("compose: every service has a health check", ok_hc),
        ("compose: depends_on waits for health", ok_dep),
        ("compose: one network", ok_net),
        ("compose: every agent is scraped", ok_scrape),
    ):
        report.checklist.append(CheckItem(check=check, ok=ok, why="yes" if ok else "see issues"))


def coverage(contract: Contract, tests: Path) -> list[Coverage]:
    """Which test files exercise each integration point (by contract key or topic)."""
    files = {p: p.read_text(errors="replace") for p in sorted(tests.glob("test_*.py"))}

    def kind(path: Path, text: str) -> str:
        if "hypothesis" in text:
            return "property"
        if path.name in ("test_contract.py", "test_security.py", "test_compose.py"):
            return "contract"
        if "broker" in text:
            return "integration"
        return "unit"

    out = []
    for key, e in contract.topics.items():
        cov = Coverage(integration_point=f"{e.topic} ({key})")
        pattern = re.compile(rf"\b{re.escape(key)}\b|{re.escape(e.topic.split('{')[0])}")
        for path, text in files.items():
            if pattern.search(text):
                getattr(cov, kind(path, text)).append(path.name)
        out.append(cov)
    return out


# -- live --------------------------------------------------------------------------------------


async def live_checks(contract: Contract, broker_url: str, watch_s: float, report: Report) -> None:
    from mesh.tools.watch import Watch

    add = report.issues.append
    requests: dict[bytes, tuple[str, float, float]] = {}
    answered: set[bytes] = set()
    status: dict[str, list[str]] = {}
    dropped = 0
    undeclared: set[str] = set()
    bad_payload: dict[str, str] = {}
    stale: set[str] = set()
    dead = 0
    loop = asyncio.get_running_loop()
    try:
        async with Watch(
            broker_url,
            ["#", "$SYS/broker/publish/messages/dropped", "$SYS/broker/store/messages/count"],
        ) as watch:
            async for msg in watch.stream(timeout=watch_s):
                if msg.topic.startswith("$SYS/"):
                    if msg.topic.endswith("dropped"):
                        dropped = int(msg.payload or b"0")
                    continue
                found = contract.match(msg.topic)
                if found is None:
                    (stale if msg.retain else undeclared).add(msg.topic)
                    continue
                entry, params = found
                if entry.kind == "reply":
                    if msg.correlation_data:
                        answered.add(msg.correlation_data)
                    continue
                if entry.key == "status":
                    status.setdefault(params["agent"], []).append(
                        msg.payload.decode(errors="replace")
                    )
                if entry.key == "dlq" and not msg.retain:
                    dead += 1
                try:
                    codec.decode(msg.payload, entry.schema_type, entry.format)
                except DecodeError as exc:
                    (
                        stale.add(msg.topic)
                        if msg.retain
                        else bad_payload.setdefault(msg.topic, exc.message[:120])
                    )
                if entry.reply_schema and msg.response_topic and msg.correlation_data:
                    requests[msg.correlation_data] = (
                        msg.topic,
                        loop.time(),
                        float(entry.timeout_s or 5),
                    )
    except MeshError as exc:
        add(
            Finding(
                service="mosquitto",
                issue=f"cannot watch the broker: {exc}",
                impact="live checks did not run",
                fix="check --broker and the doctor account",
            )
        )
        return
    report.watched_s = watch_s
    now = loop.time()
    unanswered = [t for c, (t, at, to) in requests.items() if c not in answered and now - at > to]
    for topic in sorted(set(unanswered)):
        add(
            Finding(
                service=contract.match(topic)[0].subscribers[0] if contract.match(topic) else "?",
                issue=f"requests on {topic} got no reply within their timeout "
                f"({unanswered.count(topic)} seen)",
                impact="callers time out and retry",
                fix="start the responding agent; check its health and logs",
            )
        )
    for topic in sorted(undeclared):
        add(
            Finding(
                service="unknown publisher",
                issue=f"traffic on undeclared topic {topic}",
                impact="nothing consumes it, or someone bypasses the contract",
                fix="declare it in topics.toml or stop the publisher",
            )
        )
    for topic, why in sorted(bad_payload.items()):
        add(
            Finding(
                service=(contract.match(topic) or (None, {}))[0].publishers[0]  # type: ignore[union-attr]
                if contract.match(topic)
                else "?",
                issue=f"payload on {topic} fails its schema: {why}",
                impact="dead-lettered, not processed",
                fix="fix the publisher; see `lifeops-mesh dlq list`",
            )
        )
    for topic in sorted(stale):
        add(
            Finding(
                service="retained",
                issue=f"stale retained message on {topic}",
                impact="shows up again after every restart (ghost entities in HA)",
                fix=f"mosquitto_pub -r -n -t '{topic}' (an empty retained message)",
            )
        )
    for agent in contract.meta.agents:
        states = status.get(agent, [])
        if states and states[-1] == "offline":
            add(
                Finding(
                    service=agent,
                    issue="agent offline",
                    impact="its requests time out",
                    fix=f"lifeops-mesh run {agent}",
                )
            )
        if len(states) > 3:
            add(
                Finding(
                    service=agent,
                    issue=f"availability flapping ({len(states)} changes)",
                    impact="reconnect loop",
                    fix="check the agent's logs",
                    severity="warning",
                )
            )
    if dropped:
        add(
            Finding(
                service="mosquitto",
                issue=f"{dropped} messages dropped (queue limits)",
                impact="receivers lost messages; receipts resend LifeOps' ones",
                fix="raise max_queued_messages or bring subscribers back",
            )
        )
    if dead:
        add(
            Finding(
                service="mesh",
                issue=f"{dead} dead letters during the watch",
                impact="messages not processed",
                fix="lifeops-mesh dlq list / replay",
                severity="warning",
            )
        )
    report.checklist.append(
        CheckItem(
            check="live: no undeclared traffic",
            ok=not undeclared,
            why=", ".join(sorted(undeclared)) or "none seen",
        )
    )
    report.checklist.append(
        CheckItem(
            check="live: every request answered in time",
            ok=not unanswered,
            why=f"{len(requests)} requests seen",
        )
    )


# -- report ------------------------------------------------------------------------------------


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
    static_checks(contract, report, compose, acl)
    if broker_url:
        asyncio.run(live_checks(contract, broker_url, watch_s, report))
    if tests is not None and tests.exists():
        report.coverage = coverage(contract, tests)
        for cov in report.coverage:
            if not (cov.integration or cov.property):
                report.recommendations.append(
                    f"add an integration test for {cov.integration_point}"
                )
    for f in report.issues:
        report.recommendations.append(f"{f.service}: {f.fix}")
    return report


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
