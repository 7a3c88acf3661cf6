"""`lifeops-mesh run <agent>`: one agent as its own process."""

from __future__ import annotations

import argparse
import asyncio

from lifeops_mesh import registry
from lifeops_mesh.cli.common import Subparsers, stop_on_signals
from mesh import ConfigError, Settings, build_settings, mqtt_agent
from mesh.logs import setup_logging

# Agent flags and the LIFEOPS_* variables they set (each agent reads its own from the env).
AGENT_FLAGS = {
    "rules": "LIFEOPS_RULES_FILE",
    "timeline": "LIFEOPS_TIMELINE_FILE",
    "timezone": "LIFEOPS_TIMEZONE",
}


def register(sub: Subparsers) -> None:
    p = sub.add_parser("run", help="run one agent as its own process")
    p.add_argument("agent", choices=registry.names())
    p.add_argument("--broker", help="mqtt://[user:pass@]host:port (or LIFEOPS_BROKER_URL)")
    p.add_argument("--db", help="sqlite:///file.db or postgresql://... (or LIFEOPS_DB_URL)")
    p.add_argument("--data", help="directory for the default SQLite file")
    p.add_argument("--instance", help="instance name, part of the MQTT client id")
    p.add_argument(
        "--shared",
        metavar="GROUP",
        help="consume through the MQTT v5 shared subscription $share/GROUP/...",
    )
    p.add_argument("--rules", help="rules file (stats)")
    p.add_argument("--timeline", help="timeline file (lifeops)")
    p.add_argument("--timezone", help="default IANA time zone of users (lifeops), e.g. UTC")
    p.add_argument(
        "--metrics-port",
        type=int,
        help="serve /metrics and /healthz on this port (or LIFEOPS_METRICS_PORT)",
    )
    p.add_argument("--plain-logs", action="store_true", help="human-readable logs, not JSON")
    p.set_defaults(func=cmd_run)


def settings_from(args: argparse.Namespace, env: dict[str, str]) -> Settings:
    flags = {var: getattr(args, flag) for flag, var in AGENT_FLAGS.items() if getattr(args, flag)}
    return build_settings(
        args.agent,
        broker_url=args.broker,
        db_url=args.db,
        data_dir=args.data,
        instance=args.instance,
        share_group=args.shared,
        metrics_port=args.metrics_port,
        env={**env, **flags},
    )


def cmd_run(args: argparse.Namespace) -> int:
    import os

    settings = settings_from(args, dict(os.environ))
    setup_logging(settings.agent, settings.log_level, json=not args.plain_logs)
    asyncio.run(run_agent(settings))
    return 0


async def run_agent(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM, or until the agent cannot go on (ConfigError: one line)."""
    stop = stop_on_signals()
    agent = mqtt_agent(settings, registry.build(settings))
    await agent.start()
    try:
        signalled = asyncio.ensure_future(stop.wait())
        halted = asyncio.ensure_future(agent.halted.wait())
        await asyncio.wait({signalled, halted}, return_when=asyncio.FIRST_COMPLETED)
        signalled.cancel()
        halted.cancel()
    finally:
        await agent.stop()
    if agent.failure is not None:
        raise ConfigError(agent.failure)
