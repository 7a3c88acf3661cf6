"""What several commands share: tool arguments, signals, durations."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from typing import Any, Protocol

from lifeops_contract import contract
from mesh import Contract

Subparsers = Any  # argparse's private _SubParsersAction: add_parser(name, help=...)


class Command(Protocol):
    """A command module: `register` adds its subcommand (arguments beside its handler)."""

    def register(self, sub: Subparsers) -> None: ...


def add_tool_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """--broker and --data, as every tool that talks to a running mesh takes them."""
    p.add_argument("--broker", help="mqtt://tester:PASSWORD@host:port (default: the `up` broker)")
    p.add_argument("--data", help="the data dir of `lifeops-mesh up` (default ./data)")
    p.set_defaults(tool=True)
    return p


def the_contract() -> Contract:
    return contract()


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT (Ctrl-C) or SIGTERM; installed before start-up work begins, so a
    signal during start-up still leads to a clean stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    return stop


def duration(text: str) -> float:
    """`30s`, `2m` or a number of seconds."""
    text = text.strip().lower()
    scale = {"s": 1, "m": 60}.get(text[-1:], None)
    try:
        return float(text[:-1]) * scale if scale else float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use 30s, 2m or 45)") from exc
