"""Structured (JSON) logging with the trace id of the message being handled."""

from __future__ import annotations

import contextvars
import datetime as dt
import logging
import sys

import msgspec

trace_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("trace_id", default=None)
agent_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("agent", default=None)
_enc = msgspec.json.Encoder()


class JsonFormatter(logging.Formatter):
    def __init__(self, agent: str) -> None:
        super().__init__()
        self.agent = agent

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "level": record.levelname.lower(),
            "agent": agent_var.get() or self.agent,
            "logger": record.name,
            "message": record.getMessage(),
        }
        trace = trace_id_var.get()
        if trace:
            out["trace_id"] = trace
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return _enc.encode(out).decode()


def setup_logging(agent: str, level: str = "INFO", json: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json:
        handler.setFormatter(JsonFormatter(agent))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {agent} %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("gmqtt").setLevel(logging.WARNING)
    # Start and stop are always logged: process supervisors and tests wait for them.
    logging.getLogger("mesh.lifecycle").setLevel(logging.INFO)
