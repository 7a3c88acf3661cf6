"""`lifeops-mesh tail [filter]`: a live, readable view of mesh traffic."""

from __future__ import annotations

import datetime as dt
import json
import sys
from typing import TextIO

from lifeops_contract import contract as default_contract
from lifeops_mesh.tools.watch import Watch
from mesh import TRACE_PROPERTY, Inbound


def render(msg: Inbound, width: int = 160) -> str:
    found = default_contract().match(msg.topic)
    key = found[0].key if found else ("$SYS" if msg.topic.startswith("$SYS") else "UNDECLARED")
    try:
        body = json.dumps(json.loads(msg.payload), separators=(",", ":"), ensure_ascii=False)
    except ValueError:
        body = msg.payload.decode("utf-8", "replace")
    if len(body) > width:
        body = body[: width - 3] + "..."
    trace = msg.user_properties.get(TRACE_PROPERTY, "-")
    flags = ("R" if msg.retain else "-") + ("D" if msg.dup else "-")
    now = dt.datetime.now().strftime("%H:%M:%S.%f")[:-3]
    return f"{now} {flags} {msg.topic} [{key}] trace={trace[:12]} {body}"


async def tail(
    broker_url: str,
    filters: list[str],
    *,
    timeout: float | None,
    count: int | None,
    out: TextIO = sys.stdout,
) -> int:
    async with Watch(broker_url, filters) as watch:
        async for msg in watch.stream(timeout=timeout, count=count):
            print(render(msg), file=out, flush=True)
    return 0
