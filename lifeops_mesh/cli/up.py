"""`lifeops-mesh up`: a Mosquitto from broker/ and every installed agent, SQLite under --data."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from logging.handlers import RotatingFileHandler
from pathlib import Path

import msgspec

from lifeops_mesh import registry
from lifeops_mesh.broker import local_broker
from lifeops_mesh.cli.common import Subparsers, stop_on_signals, the_contract
from lifeops_mesh.local import DataDirLock, ensure_port_free
from mesh import Agent, MeshClient, build_settings, mqtt_agent
from mesh.broker.process import MosquittoProcess
from mesh.logs import setup_logging

# mesh.log rotates at 10 MiB, keeping mesh.log.1 ... mesh.log.5: at most ~60 MiB of logs.
LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 5


def register(sub: Subparsers) -> None:
    p = sub.add_parser("up", help="start a Mosquitto from broker/ and every agent")
    p.add_argument("--data", default="data", help="directory for SQLite files and broker state")
    p.add_argument("--port", type=int, default=1884, help="port of the embedded Mosquitto")
    p.add_argument("--broker", help="use this broker instead: mqtt://user:pass@host:port")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=9181,
        help="first port for the agents' /metrics and /healthz (0: free ports)",
    )
    p.add_argument("--demo", action="store_true", help="log a few activities for user demo")
    p.add_argument("--once", action="store_true", help="stop after start-up (and the demo)")
    p.set_defaults(func=cmd_up)


def cmd_up(args: argparse.Namespace) -> int:
    data = Path(args.data).resolve()
    os.umask(0o077)  # what `up` and its Mosquitto create is the user's only (0600, 0700)
    lock = DataDirLock(data)
    lock.acquire()  # before anything in `data` is touched
    try:
        make_private(data)
        check_ports(args)
        return _run_up(args, data)
    finally:
        lock.release()


def check_ports(args: argparse.Namespace) -> None:
    """The ports `up` will listen on are free (else one line saying which, and nothing runs)."""
    if not args.broker:
        ensure_port_free(args.port, "the embedded Mosquitto, --port")
    if args.metrics_port:
        for n in range(len(registry.names())):
            ensure_port_free(args.metrics_port + n, "agent metrics, --metrics-port")


def make_private(data: Path) -> None:
    """The data dir 0700, and what an earlier version left readable (broker files, logs) its
    owner's only; the stores chmod their databases, the umask covers what is created now."""
    data.chmod(0o700)
    broker = data / "broker"
    for path in [*data.glob("broker"), *broker.glob("**/*"), *data.glob("mesh.log*")]:
        path.chmod(0o700 if path.is_dir() else 0o600)


def log_file(
    path: Path, max_bytes: int = LOG_MAX_BYTES, backups: int = LOG_BACKUPS
) -> RotatingFileHandler:
    """A log file that rotates by size (path.1 ... path.<backups>); 0600 like what rotation
    creates under `up`'s umask."""
    handler = RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
    path.chmod(0o600)
    return handler


def _run_up(args: argparse.Namespace, data: Path) -> int:
    # Structured logs go to a file; the console keeps the readable summary.
    setup_logging("mesh", "INFO", json=True)
    handler = log_file(data / "mesh.log")
    handler.setFormatter(logging.getLogger().handlers[0].formatter)
    logging.getLogger().handlers[:] = [handler]
    return asyncio.run(up(args, data))


async def up(args: argparse.Namespace, data: Path) -> int:
    stop = stop_on_signals()
    broker: MosquittoProcess | None = None
    if not args.broker:
        broker = local_broker(data / "broker", port=args.port)
        await asyncio.to_thread(broker.start)
        print(
            f"mosquitto: 127.0.0.1:{broker.port} (config {data / 'broker' / 'mosquitto.conf'}, "
            f"passwords in {data / 'broker' / 'credentials.toml'})"
        )
    agents: list[Agent] = []
    try:
        await start_agents(args, data, broker, agents)
        if broker is not None:
            print_hints(broker)
        if args.demo:
            if broker is None:
                print("  (--demo needs the embedded broker's tester account; skipped)")
            else:
                from lifeops_mesh.tools.demo import quick_demo

                async with MeshClient(broker.url("tester"), the_contract()) as client:
                    await quick_demo(client)
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


async def start_agents(
    args: argparse.Namespace, data: Path, broker: MosquittoProcess | None, agents: list[Agent]
) -> None:
    """Every installed agent, each after those it depends on; appended to `agents` as they
    start, so a failure stops the ones already running."""
    settings = {}
    for name in registry.names():
        url = args.broker or (broker.url(name) if broker else "")
        settings[name] = build_settings(name, broker_url=url, data_dir=data)
    apps = registry.start_order([registry.build(s) for s in settings.values()])
    for n, app in enumerate(apps):  # metrics ports in start order: stats 9181, lifeops 9182, ...
        port = args.metrics_port + n if args.metrics_port else 0
        settings[app.name] = msgspec.structs.replace(settings[app.name], metrics_port=port)
        agent = mqtt_agent(settings[app.name], app)
        await agent.start()
        agents.append(agent)
        http = agent.http.port if agent.http else "-"
        print(
            f"agent {app.name}: online (db {settings[app.name].db_url}, "
            f"metrics http://127.0.0.1:{http}/metrics, health /healthz)"
        )


def print_hints(broker: MosquittoProcess) -> None:
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
