"""Agents of this installation as real processes (`python -m lifeops_mesh run <agent>`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from mesh.testing.processes import AgentProcess

CLI = (sys.executable, "-m", "lifeops_mesh")


def agent_process(
    agent: str, broker_url: str, db_url: str, *, data_dir: Path, **kw: Any
) -> AgentProcess:
    """An agent process of this installation, not started yet."""
    return AgentProcess(agent, broker_url, db_url, cli=CLI, data_dir=data_dir, **kw)
