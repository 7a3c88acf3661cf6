"""Agent processes behind one MQTT v5 shared subscription (`--shared`), on one database."""

from __future__ import annotations

import contextlib
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lifeops_mesh.processes import agent_process
from mesh.broker.process import MosquittoProcess, free_port
from mesh.testing.processes import AgentProcess


@contextlib.contextmanager
def running(procs: list[AgentProcess]) -> Iterator[list[AgentProcess]]:
    """Start the processes together; stop them (SIGTERM) when the block ends."""
    try:
        with ThreadPoolExecutor(len(procs)) as pool:
            list(pool.map(lambda p: p.start(), procs))
        yield procs
    finally:
        for p in procs:
            p.stop()


class Instances:
    """Agent processes with a metrics endpoint each."""

    def __init__(self, procs: list[AgentProcess], ports: list[int]) -> None:
        self.procs, self.ports = procs, ports

    def received(self) -> list[float]:
        """Messages each one received (its /metrics): both must have taken part."""
        out = []
        for port in self.ports:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                text = r.read().decode()
            out.append(
                sum(
                    float(line.rsplit(" ", 1)[1])
                    for line in text.splitlines()
                    if line.startswith("mesh_messages_received_total{")
                )
            )
        return out


def shared_instances(
    agent: str, broker: MosquittoProcess, db_url: str, work: Path, n: int = 2
) -> Instances:
    """`n` processes of `agent` on one database, members of a shared subscription of their
    own, each with a metrics endpoint."""
    group = "x" + uuid.uuid4().hex[:6]
    ports = [free_port() for _ in range(n)]
    procs = [
        agent_process(
            agent, broker.url(agent), db_url, data_dir=work / f"{agent}{i}",
            instance=f"{group}{i}",
            extra_args=["--shared", group, "--metrics-port", str(ports[i])],
        )
        for i in range(n)
    ]  # fmt: skip
    return Instances(procs, ports)
