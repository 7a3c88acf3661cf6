"""`lifeops-mesh up`: a Mosquitto from broker/ and every installed agent, SQLite under --data."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
from importlib import resources
from logging.handlers import RotatingFileHandler
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import msgspec

from lifeops_mesh import registry
from lifeops_mesh.broker import local_broker
from lifeops_mesh.cli.common import Subparsers, stop_on_signals, the_contract
from lifeops_mesh.local import DataDirLock, ensure_port_free
from mesh import Agent, ConfigError, MeshClient, build_settings, mqtt_agent
from mesh.broker.accounts import CREDENTIALS, load_credentials_file
from mesh.broker.process import MosquittoProcess
from mesh.logs import setup_logging

# mesh.log rotates at 10 MiB, keeping mesh.log.1 ... mesh.log.5: at most ~60 MiB of logs.
LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 5


def register(sub: Subparsers) -> None:
    p = sub.add_parser("up", help="start a Mosquitto from broker/ and every agent")
    p.add_argument("--data", default="data", help="directory for SQLite files and broker state")
    p.add_argument("--port", type=int, default=1884, help="port of the embedded Mosquitto")
    p.add_argument(
        "--listen",
        default="127.0.0.1",
        metavar="ADDRESS",
        help="address the embedded Mosquitto listens on; 0.0.0.0: every interface, so a Home "
        "Assistant on your network can reach it (default 127.0.0.1: this machine only)",
    )
    p.add_argument("--broker", help="use this broker instead: mqtt://[user:pass@]host:port")
    p.add_argument(
        "--credentials",
        metavar="FILE",
        help="with --broker mqtt://host:port: each agent logs in with its own account, "
        "passwords from FILE (written by `lifeops-mesh broker accounts`)",
    )
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
    if args.credentials and not args.broker:
        raise ConfigError("--credentials goes with --broker mqtt://host:port (an existing broker)")
    if args.broker and args.listen != "127.0.0.1":
        raise ConfigError("--listen is for the embedded Mosquitto; with --broker nothing listens")
    if not args.broker:
        ensure_port_free(args.port, "the embedded Mosquitto, --port", host=args.listen)
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
        broker = local_broker(data / "broker", port=args.port, bind=args.listen)
        await asyncio.to_thread(broker.start)
        print(
            f"mosquitto: {_host_port(args.listen, broker.port)} (config "
            f"{data / 'broker' / 'mosquitto.conf'}, passwords in {credentials_file(data)})"
        )
    agents: list[Agent] = []
    try:
        await start_agents(args, data, broker, agents)
        if broker is not None:
            print_hints(broker, data)
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
    accounts = load_accounts(Path(args.credentials)) if args.credentials else None
    for name in registry.names():
        if args.broker:
            url = account_url(args.broker, name, accounts) if accounts else args.broker
        else:
            url = broker.url(name) if broker else ""
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


def load_accounts(path: Path) -> dict[str, str]:
    """The [users] of a credentials.toml; ConfigError naming the file when there are none."""
    users = load_credentials_file(path)
    if not users:
        raise ConfigError(
            f"--credentials {path}: no accounts there (`lifeops-mesh broker accounts --for ...` "
            "writes them)"
        )
    return users


def account_url(base: str, agent: str, accounts: dict[str, str]) -> str:
    """`base` (mqtt[s]://host:port, no user) with the agent's own account from `accounts`."""
    parts = urlsplit(base)
    if parts.username or parts.password:
        raise ConfigError("with --credentials, give --broker without a user: mqtt://host:port")
    if agent not in accounts:
        raise ConfigError(f"--credentials has no password for the {agent!r} account")
    netloc = f"{quote(agent, safe='')}:{quote(accounts[agent], safe='')}@{parts.netloc}"
    return urlunsplit(parts._replace(netloc=netloc))


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def credentials_file(data: Path) -> Path:
    return data / "broker" / CREDENTIALS


def homeassistant_doc() -> Path:
    """docs/homeassistant.md as installed with the package (it ships inside it)."""
    return Path(str(resources.files("lifeops_mesh") / "docs" / "homeassistant.md"))


def lan_address() -> str | None:
    """This machine's address on its network: the source address of the default route (a UDP
    socket's connect sends nothing); None without one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: never used, only routed
            address = str(s.getsockname()[0])
        except OSError:
            return None
    return None if address.startswith("127.") else address


def print_hints(broker: MosquittoProcess, data: Path) -> None:
    pw = broker.credentials["tester"]
    host = "" if broker.host == "127.0.0.1" else f"-h {broker.host} "
    print(
        "try it:\n"
        f"  mosquitto_rr -V mqttv5 {host}-p {broker.port} -u tester -P '{pw}' "
        "-t stats/activities/log -e reply/tester/1 "
        '-m \'{"user_id":"alice","activity_type":"gym_session"}\' -W 5'
    )
    print(homeassistant_settings(broker, data))


def homeassistant_settings(broker: MosquittoProcess, data: Path) -> str:
    """What to enter in Home Assistant's MQTT integration for this broker."""
    if broker.bind.startswith("127.") or broker.bind == "::1":
        where = (
            f"  this broker listens on {broker.bind} only: a Home Assistant on another machine "
            "cannot reach it; restart with --listen 0.0.0.0 (or this machine's address)\n"
        )
        address = broker.bind
    elif broker.bind in ("0.0.0.0", "::", ""):
        address = lan_address() or "<this machine's address>"
        where = "  (any address of this machine works; this is the one of its default route)\n"
    else:
        address, where = broker.bind, ""
    return (
        "Home Assistant: Settings > Devices & services > Add integration > MQTT, then:\n"
        f"  Broker: {address}\n  Port: {broker.port}\n  Username: homeassistant\n"
        f"  Password: the `homeassistant` line of {credentials_file(data)}\n"
        f"{where}"
        f"  (details: {homeassistant_doc()})"
    )
