"""`lifeops-mesh`: run the mesh, one agent, or the broker tooling."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from mesh.agent import Agent, AgentApp
from mesh.client import MeshClient
from mesh.contract import default_contract
from mesh.errors import ConfigError, MeshError
from mesh.logs import setup_logging
from mesh.settings import AGENTS, Settings, build_settings

log = logging.getLogger("mesh.cli")


def _build_stats(settings: Settings) -> AgentApp:
    from stats_agent.agent import build

    return build(settings)


def _build_lifeops(settings: Settings) -> AgentApp:
    from lifeops_agent.agent import build

    return build(settings)


def _build_ha_bridge(settings: Settings) -> AgentApp:
    from ha_bridge.agent import build

    return build(settings)


# The agents that exist in this version; `up` starts all of them (in this order).
BUILDERS: dict[str, Callable[[Settings], AgentApp]] = {
    "stats": _build_stats,
    "lifeops": _build_lifeops,
    "ha_bridge": _build_ha_bridge,
}


def build_agent(settings: Settings) -> Agent:
    builder = BUILDERS.get(settings.agent)
    if builder is None:
        raise ConfigError(
            f"agent {settings.agent!r} is not part of this version yet "
            f"(available: {', '.join(BUILDERS)})"
        )
    return Agent(settings, builder(settings))


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT (Ctrl-C) or SIGTERM; installed before start-up work begins, so a
    signal during start-up still leads to a clean stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    return stop


# -- run ---------------------------------------------------------------------------------------


async def _run_agent(settings: Settings) -> None:
    stop = stop_on_signals()
    agent = build_agent(settings)
    await agent.start()
    try:
        await stop.wait()
    finally:
        await agent.stop()


def cmd_run(args: argparse.Namespace) -> int:
    settings = build_settings(
        args.agent,
        broker_url=args.broker,
        db_url=args.db,
        data_dir=args.data,
        instance=args.instance,
        share_group=args.shared,
        rules_file=args.rules,
        timeline_file=args.timeline,
        timezone=args.timezone,
        metrics_port=args.metrics_port,
    )
    setup_logging(settings.agent, settings.log_level, json=not args.plain_logs)
    asyncio.run(_run_agent(settings))
    return 0


# -- up ----------------------------------------------------------------------------------------


async def _demo(broker_url: str) -> None:
    """Log a few activities for user `demo` (idempotent per day) and print what Stats answers."""
    async with MeshClient(broker_url) as client:
        await _demo_requests(client)


async def _demo_requests(client: MeshClient) -> None:
    from mesh.schemas import (
        ActivityLogRequest,
        CharacterGetRequest,
        TimelineCompleteRequest,
        TimelineGetRequest,
    )

    today = dt.date.today().isoformat()
    for code in ("morning_stretch", "meditation"):
        done = await client.request(
            "timeline_complete", TimelineCompleteRequest(user_id="demo", item_code=code)
        )
        if done.success:
            xp = "XP pending" if done.xp_pending else done.message
            print(f"  demo: completed {code} (streak {done.new_streak}) -> {xp}")
        else:
            print(f"  demo: {code}: {done.error.message if done.error else 'failed'}")
    timeline = (await client.request("timeline_get", TimelineGetRequest(user_id="demo"))).timeline
    print(f"  demo: timeline {timeline.date}: {timeline.done}/{timeline.total} items done")
    for activity in ("gym_session", "reading", "meditation"):
        req = ActivityLogRequest(
            user_id="demo",
            activity_type=activity,
            source="manual",
            source_ref=f"demo:{activity}:{today}",
        )
        reply = await client.request("activities_log", req)
        note = " (already logged today)" if reply.duplicate else ""
        print(f"  demo: {activity:<12} -> {reply.message}{note}")
    sheet = await client.request("character_get", CharacterGetRequest(user_id="demo"))
    c = sheet.character
    print(
        f"  demo: character level {c.level}, total XP {c.total_xp}, "
        f"achievements {', '.join(c.achievements) or '-'}"
    )


async def _up(args: argparse.Namespace, data: Path) -> int:
    from mesh.broker.process import MosquittoProcess

    stop = stop_on_signals()
    broker = None
    if args.broker:
        urls = {name: args.broker for name in BUILDERS}
    else:
        broker = MosquittoProcess(data / "broker", port=args.port)
        await asyncio.to_thread(broker.start)
        urls = {name: broker.url(name) for name in BUILDERS}
        print(
            f"mosquitto: 127.0.0.1:{broker.port} (config {data / 'broker' / 'mosquitto.conf'}, "
            f"passwords in {data / 'broker' / 'credentials.toml'})"
        )
    agents: list[Agent] = []
    try:
        for n, name in enumerate(BUILDERS):
            port = args.metrics_port + n if args.metrics_port else 0
            settings = build_settings(name, broker_url=urls[name], data_dir=data, metrics_port=port)
            agent = build_agent(settings)
            await agent.start()
            agents.append(agent)
            http = agent.http.port if agent.http else "-"
            print(
                f"agent {name}: online (db {settings.db_url}, "
                f"metrics http://127.0.0.1:{http}/metrics, health /healthz)"
            )
        if broker is not None:
            pw = broker.credentials["tester"]
            print(
                "try it:\n"
                f"  mosquitto_rr -V mqttv5 -p {broker.port} -u tester -P '{pw}' "
                "-t stats/activities/log -e reply/tester/1 "
                '-m \'{"user_id":"alice","activity_type":"gym_session"}\' -W 5'
            )
            print(
                "Home Assistant: add the MQTT integration with broker <this host>, port "
                f"{broker.port}, user homeassistant, password "
                f"'{broker.credentials['homeassistant']}' (docs/homeassistant.md)"
            )
        if args.demo:
            if broker is None:
                print("  (--demo needs the embedded broker's tester account; skipped)")
            else:
                await _demo(broker.url("tester"))
        if not args.once:
            print("mesh is up; Ctrl-C stops it", flush=True)
            await stop.wait()
    finally:
        for agent in reversed(agents):
            await agent.stop()
        if broker is not None:
            await asyncio.to_thread(broker.stop)
        print("mesh stopped")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    data = Path(args.data).resolve()
    data.mkdir(parents=True, exist_ok=True)
    # Structured logs go to a file; the console keeps the readable summary above.
    setup_logging("mesh", "INFO", json=True)
    handler = logging.FileHandler(data / "mesh.log")
    handler.setFormatter(logging.getLogger().handlers[0].formatter)
    logging.getLogger().handlers[:] = [handler]
    return asyncio.run(_up(args, data))


# -- broker ------------------------------------------------------------------------------------


def cmd_broker_acl(args: argparse.Namespace) -> int:
    from mesh.broker.acl import generate_acl

    prefix = args.discovery_prefix or os.environ.get("LIFEOPS_HA_DISCOVERY_PREFIX") or ""
    contract = default_contract()
    if prefix:
        contract = contract.with_discovery_prefix(prefix)
    sys.stdout.write(generate_acl(contract))
    return 0


def cmd_broker_passwords(args: argparse.Namespace) -> int:
    from mesh.broker.accounts import ensure_accounts

    directory = Path(args.dir)
    creds = ensure_accounts(directory, list(default_contract().meta.principals), rotate=args.rotate)
    print(
        f"{directory / 'passwd'}: {len(creds)} accounts ({', '.join(sorted(creds))}); "
        f"passwords in {directory / 'credentials.toml'}"
    )
    return 0


def cmd_contract_check(args: argparse.Namespace) -> int:
    contract = default_contract()
    print(f"topics.toml: {len(contract.topics)} entries, sound")
    for key, e in contract.topics.items():
        print(
            f"  {key:<20} {e.topic:<32} {e.kind:<12} qos {e.qos} "
            f"{'retained ' if e.retain else ''}{e.schema}"
        )
    return 0


def cmd_contract_docs(args: argparse.Namespace) -> int:
    from mesh.contract_docs import render_into, topic_table

    contract = default_contract()
    if args.write:
        readme = Path(args.write)
        readme.write_text(
            render_into(readme.read_text(encoding="utf-8"), contract), encoding="utf-8"
        )
        print(f"{readme}: topic table updated")
    else:
        print(topic_table(contract))
    return 0


def tool_broker_url(broker: str | None, data: str | None) -> str:
    """The broker a tool talks to: --broker, LIFEOPS_BROKER_URL, or the `up` broker in --data."""
    import os

    if broker:
        return broker
    if os.environ.get("LIFEOPS_TOOL_BROKER_URL"):
        return os.environ["LIFEOPS_TOOL_BROKER_URL"]
    from mesh.broker.accounts import load_credentials

    run_dir = Path(data or "data") / "broker"
    creds = load_credentials(run_dir)
    conf = run_dir / "mosquitto.conf"
    if "tester" not in creds or not conf.exists():
        raise ConfigError(
            f"no broker given and no `lifeops-mesh up` state in {run_dir}: pass --broker "
            "mqtt://tester:PASSWORD@host:port or set LIFEOPS_TOOL_BROKER_URL"
        )
    port = next(
        line.split()[1] for line in conf.read_text().splitlines() if line.startswith("listener ")
    )
    return f"mqtt://tester:{creds['tester']}@127.0.0.1:{port}"


def _progress(done: int, total: int, width: int = 30) -> None:
    filled = int(width * done / total) if total else width
    sys.stderr.write(f"\r  [{'#' * filled}{'.' * (width - filled)}] {done}/{total} days")
    sys.stderr.flush()


async def _oura_import(url: str, user_id: str, target: Path, chunk: int) -> int:
    from lifeops_agent.oura import load_days
    from mesh.schemas import OuraImportRequest

    days = load_days(target)
    imported = skipped = 0
    async with MeshClient(url) as client:
        for start in range(0, len(days), chunk):
            part = days[start : start + chunk]
            reply = await client.request(
                "oura_import", OuraImportRequest(user_id=user_id, days=part)
            )
            if not reply.success:
                sys.stderr.write("\n")
                raise ConfigError(f"import refused: {reply.error.code}: {reply.error.message}")
            imported += reply.imported
            skipped += reply.skipped
            _progress(start + len(part), len(days))
    sys.stderr.write("\n")
    print(f"{target}: {len(days)} days for {user_id}: {imported} new, {skipped} already imported")
    return 0


def cmd_oura_import(args: argparse.Namespace) -> int:
    url = tool_broker_url(args.broker, args.data)
    return asyncio.run(_oura_import(url, args.user, Path(args.path), args.chunk))


def _json_arg(text: str) -> bytes:
    return text.encode("utf-8")


def cmd_tail(args: argparse.Namespace) -> int:
    from mesh.tools.tail import tail

    url = tool_broker_url(args.broker, args.data)
    filters = args.filter or ["#"]
    return asyncio.run(tail(url, filters, timeout=args.timeout, count=args.count))


def cmd_request(args: argparse.Namespace) -> int:
    from mesh import codec
    from mesh.errors import DecodeError

    url = tool_broker_url(args.broker, args.data)
    contract = default_contract()
    entry = contract.entry(args.key)
    try:
        payload = codec.decode(_json_arg(args.json), entry.schema_type, entry.format)
    except DecodeError as exc:
        raise ConfigError(f"payload for {args.key} ({entry.schema}): {exc}") from exc

    async def go() -> int:
        import uuid

        trace_id = uuid.uuid4().hex
        print(f"trace {trace_id}", file=sys.stderr)
        async with MeshClient(url) as client:
            reply = await client.request(args.key, payload, timeout=args.timeout, trace_id=trace_id)
        print(codec.encode(reply).decode())
        return 0 if getattr(reply, "success", True) else 1

    return asyncio.run(go())


def cmd_health(args: argparse.Namespace) -> int:
    from mesh.tools.health import gather, render

    report = asyncio.run(gather(tool_broker_url(args.broker, args.data)))
    if args.json:
        from mesh import codec

        print(codec.encode(report).decode())
    else:
        print(render(report))
    return 0 if report.ok else 1


def _dlq_db(args: argparse.Namespace) -> str:
    return args.db or f"sqlite:///{Path(args.data or 'data').resolve() / (args.agent + '.db')}"


def cmd_dlq_list(args: argparse.Namespace) -> int:
    from mesh.tools.dlq import list_dead_letters, render

    items = asyncio.run(list_dead_letters(_dlq_db(args), include_replayed=args.all))
    print(render(items))
    return 0


def cmd_dlq_replay(args: argparse.Namespace) -> int:
    from mesh import codec
    from mesh.tools.dlq import replay

    reply = asyncio.run(
        replay(_dlq_db(args), tool_broker_url(args.broker, args.data), args.id, args.payload)
    )
    print(codec.encode(reply).decode() if reply is not None else "published")
    return 0 if reply is None or getattr(reply, "success", True) else 1


def cmd_trace(args: argparse.Namespace) -> int:
    from mesh.tools.trace import find, render

    files = [Path(f) for f in args.log] or [Path(args.data or "data") / "mesh.log"]
    missing = [f for f in files if not f.exists()]
    if missing:
        raise ConfigError(f"no log file {missing[0]} (pass --log FILE for each agent's log)")
    print(render(find(args.trace_id, files)))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from mesh.tools.demo import run_demo

    return asyncio.run(run_demo(tool_broker_url(args.broker, args.data), days=args.days))


def cmd_reliability(args: argparse.Namespace) -> int:
    from mesh.tools.reliability import run

    logging.basicConfig(level=logging.WARNING, format="    (%(name)s) %(message)s")
    logging.getLogger("gmqtt").setLevel(logging.ERROR)

    report = asyncio.run(
        run(
            backend=args.backend,
            users=args.users,
            rate=args.rate,
            outage_s=args.outage,
            kills=args.kills,
            seed=args.seed,
        )
    )
    print()
    print(report.table())
    return 0 if report.ok else 1


def _duration(text: str) -> float:
    text = text.strip().lower()
    scale = {"s": 1, "m": 60}.get(text[-1:], None)
    return float(text[:-1]) * scale if scale else float(text)


def cmd_doctor(args: argparse.Namespace) -> int:
    from mesh.contract import Contract
    from mesh.tools.doctor import ROOT, build_report, markdown

    contract = Contract.load(args.contract) if args.contract else default_contract()
    broker = None
    if args.watch:
        broker = args.broker or tool_broker_url(None, args.data).replace("tester:", "doctor:", 1)
        if not args.broker:
            from mesh.broker.accounts import load_credentials

            creds = load_credentials(Path(args.data or "data") / "broker")
            broker = broker.split("@")[1]
            broker = f"mqtt://doctor:{creds.get('doctor', '')}@{broker}"
    compose = Path(args.compose) if args.compose else ROOT / "compose.yaml"
    report = build_report(
        contract,
        broker_url=broker,
        watch_s=_duration(args.watch) if args.watch else 0,
        compose=compose if compose.exists() else None,
        acl=Path(args.acl) if args.acl else ROOT / "broker" / "acl",
        tests=ROOT / "tests",
    )
    if args.json:
        from mesh import codec

        print(codec.encode(report).decode())
    else:
        print(markdown(report), end="")
    return 1 if report.critical else 0


def cmd_contract_asyncapi(args: argparse.Namespace) -> int:
    import json

    from mesh.tools.asyncapi import generate

    print(json.dumps(generate(default_contract(), host=args.host), indent=2))
    return 0


# -- parser ------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="lifeops-mesh", description=__doc__)
    sub = root.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start a Mosquitto from broker/ and every agent")
    up.add_argument("--data", default="data", help="directory for SQLite files and broker state")
    up.add_argument("--port", type=int, default=1884, help="port of the embedded Mosquitto")
    up.add_argument("--broker", help="use this broker instead: mqtt://user:pass@host:port")
    up.add_argument(
        "--metrics-port",
        type=int,
        default=9181,
        help="first port for the agents' /metrics and /healthz (0: free ports)",
    )
    up.add_argument("--demo", action="store_true", help="log a few activities for user demo")
    up.add_argument("--once", action="store_true", help="stop after start-up (and the demo)")
    up.set_defaults(func=cmd_up)

    run = sub.add_parser("run", help="run one agent as its own process")
    run.add_argument("agent", choices=AGENTS)
    run.add_argument("--broker", help="mqtt://[user:pass@]host:port (or LIFEOPS_BROKER_URL)")
    run.add_argument("--db", help="sqlite:///file.db or postgresql://... (or LIFEOPS_DB_URL)")
    run.add_argument("--data", help="directory for the default SQLite file")
    run.add_argument("--instance", help="instance name, part of the MQTT client id")
    run.add_argument(
        "--shared",
        metavar="GROUP",
        help="consume through the MQTT v5 shared subscription $share/GROUP/...",
    )
    run.add_argument("--rules", help="rules file (stats)")
    run.add_argument("--timeline", help="timeline file (lifeops)")
    run.add_argument("--timezone", help="default IANA time zone of users (lifeops), e.g. UTC")
    run.add_argument(
        "--metrics-port",
        type=int,
        help="serve /metrics and /healthz on this port (or LIFEOPS_METRICS_PORT)",
    )
    run.add_argument("--plain-logs", action="store_true", help="human-readable logs, not JSON")
    run.set_defaults(func=cmd_run)

    broker = sub.add_parser("broker", help="broker tooling").add_subparsers(
        dest="what", required=True
    )
    acl = broker.add_parser("acl", help="print the ACL generated from topics.toml")
    acl.add_argument(
        "--discovery-prefix",
        help="Home Assistant's discovery prefix when not `homeassistant` "
        "(default: LIFEOPS_HA_DISCOVERY_PREFIX)",
    )
    acl.set_defaults(func=cmd_broker_acl)
    pw = broker.add_parser("passwords", help="create the passwd file and credentials.toml")
    pw.add_argument("--dir", default="broker/local", help="where to write them")
    pw.add_argument("--rotate", action="store_true", help="generate new passwords for everyone")
    pw.set_defaults(func=cmd_broker_passwords)

    oura = sub.add_parser("oura", help="Oura ring data").add_subparsers(dest="what", required=True)
    imp = oura.add_parser("import", help="send Oura API v2 daily JSON files to LifeOps")
    imp.add_argument("path", help="a daily_sleep/daily_readiness/daily_activity JSON file or dir")
    imp.add_argument("--user", required=True, help="the user id the data belongs to")
    imp.add_argument("--broker", help="mqtt://tester:PASSWORD@host:port")
    imp.add_argument("--data", help="the data dir of `lifeops-mesh up` (default ./data)")
    imp.add_argument("--chunk", type=int, default=30, help="days per request")
    imp.set_defaults(func=cmd_oura_import)

    def tool(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument(
            "--broker", help="mqtt://tester:PASSWORD@host:port (default: the `up` broker)"
        )
        p.add_argument("--data", help="the data dir of `lifeops-mesh up` (default ./data)")
        return p

    t = tool("tail", "a live, readable view of mesh traffic")
    t.add_argument("filter", nargs="*", help="MQTT topic filters (default #)")
    t.add_argument("--timeout", type=float, help="stop after this many seconds")
    t.add_argument("--count", type=int, help="stop after this many messages")
    t.set_defaults(func=cmd_tail)

    r = tool("request", "request/response by contract key, printing the reply")
    r.add_argument("key", help="contract key, e.g. activities_log (see `contract check`)")
    r.add_argument("json", help="the request payload")
    r.add_argument("--timeout", type=float, help="seconds (default: the contract's)")
    r.set_defaults(func=cmd_request)

    h = tool("health", "every agent's availability and health, and the broker's figures")
    h.add_argument("--json", action="store_true")
    h.set_defaults(func=cmd_health)

    d = tool("demo", "push a realistic week for two users through a running mesh")
    d.add_argument("--days", type=int, default=7)
    d.set_defaults(func=cmd_demo)

    doc = sub.add_parser("doctor", help="the integration review: contract, ACL, compose, live")
    doc.add_argument("--watch", metavar="DURATION", help="watch the broker, e.g. 30s")
    doc.add_argument("--broker", help="mqtt://doctor:PASSWORD@host:port (read-only account)")
    doc.add_argument("--data", help="the data dir of `lifeops-mesh up` (default ./data)")
    doc.add_argument("--json", action="store_true", help="JSON instead of Markdown")
    doc.add_argument("--contract", help="another topics.toml")
    doc.add_argument("--compose", help="another compose.yaml")
    doc.add_argument("--acl", help="another ACL file")
    doc.set_defaults(func=cmd_doctor)

    rel = sub.add_parser("reliability", help="inject faults into a local mesh; count losses")
    rel.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    rel.add_argument("--users", type=int, default=20)
    rel.add_argument("--rate", type=float, default=40.0, help="requests per second")
    rel.add_argument("--outage", type=float, default=20.0, help="broker outage in seconds")
    rel.add_argument("--kills", type=int, default=2, help="kill -9 rounds per agent")
    rel.add_argument("--seed", type=int, default=1)
    rel.set_defaults(func=cmd_reliability)

    tr = sub.add_parser("trace", help="the whole path of one trace id, from the JSON logs")
    tr.add_argument("trace_id")
    tr.add_argument("--log", action="append", default=[], help="a log file (repeatable)")
    tr.add_argument("--data", help="the data dir of `lifeops-mesh up` (its mesh.log)")
    tr.set_defaults(func=cmd_trace)

    dlq = sub.add_parser("dlq", help="dead letters").add_subparsers(dest="what", required=True)
    for name, fn, text in (
        ("list", cmd_dlq_list, "show an agent's dead letters"),
        ("replay", cmd_dlq_replay, "send a dead letter (or a fix) again"),
    ):
        p = dlq.add_parser(name, help=text)
        p.add_argument("--agent", default="stats", choices=AGENTS)
        p.add_argument("--db", help="the agent's database URL (default: DATA/<agent>.db)")
        p.add_argument("--data", help="the data dir of `lifeops-mesh up` (default ./data)")
        p.set_defaults(func=fn)
        if name == "list":
            p.add_argument("--all", action="store_true", help="include replayed ones")
        else:
            p.add_argument("id", help="the dead letter's id (from `dlq list`)")
            p.add_argument("--payload", help="a fixed payload to send instead")
            p.add_argument("--broker", help="mqtt://tester:PASSWORD@host:port")

    contract = sub.add_parser("contract", help="contract tooling").add_subparsers(
        dest="what", required=True
    )
    check = contract.add_parser("check", help="load and check topics.toml")
    check.set_defaults(func=cmd_contract_check)
    docs = contract.add_parser("docs", help="print the README's topic table (or --write it)")
    docs.add_argument("--write", metavar="README", help="update the table inside this file")
    docs.set_defaults(func=cmd_contract_docs)
    aapi = contract.add_parser("asyncapi", help="print an AsyncAPI 3.0 document (JSON)")
    aapi.add_argument("--host", default="localhost:1883", help="the server's host:port")
    aapi.set_defaults(func=cmd_contract_asyncapi)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except MeshError as exc:
        print(f"lifeops-mesh: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


__all__ = ["main"]
