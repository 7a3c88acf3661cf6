"""`lifeops-mesh trace ID`: the whole path of one trace, from the agents' JSON logs."""

from __future__ import annotations

from pathlib import Path

import msgspec


class LogLine(msgspec.Struct):
    time: str
    agent: str
    message: str
    level: str = "info"
    trace_id: str | None = None
    logger: str = ""


def find(trace_id: str, files: list[Path]) -> list[LogLine]:
    out: list[LogLine] = []
    decoder = msgspec.json.Decoder(LogLine)
    for path in files:
        with path.open("rb") as fh:
            for raw in fh:
                if trace_id.encode() not in raw:
                    continue
                try:
                    line = decoder.decode(raw)
                except msgspec.DecodeError:
                    continue
                if line.trace_id and line.trace_id.startswith(trace_id):
                    out.append(line)
    return sorted(out, key=lambda ln: ln.time)


def render(lines: list[LogLine]) -> str:
    if not lines:
        return "no log line carries this trace id"
    return "\n".join(f"{ln.time}  {ln.agent:<9} {ln.level:<7} {ln.message}" for ln in lines)
