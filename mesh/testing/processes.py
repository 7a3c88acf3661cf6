"""Agents as real OS processes (`<cli> run <agent> ...`), for kill -9 and restart tests."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

_LIVE: set[subprocess.Popen[str]] = set()


@atexit.register
def _kill_leftovers() -> None:
    """A test that timed out must not leave agents running after the test process ends."""
    for proc in list(_LIVE):
        if proc.poll() is None:
            proc.kill()


class AgentProcess:
    def __init__(
        self,
        agent: str,
        broker_url: str,
        db_url: str,
        *,
        cli: Sequence[str],
        data_dir: Path,
        instance: str = "p0",
        env: dict[str, str] | None = None,
        extra_args: list[str] | None = None,
        log_file: Path | None = None,
    ) -> None:
        self.log_file = log_file  # every stderr line is also appended here
        self.agent = agent
        self.args = [
            *cli,
            "run",
            agent,
            "--broker",
            broker_url,
            "--db",
            db_url,
            "--data",
            str(data_dir),
            "--instance",
            instance,
            *(extra_args or []),
        ]
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []

    def start(self, timeout: float = 30.0) -> None:
        self.lines = []
        self.proc = subprocess.Popen(
            self.args, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        _LIVE.add(self.proc)
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(f"{self.agent} started" in ln for ln in self.lines):
                return
            if self.proc.poll() is not None:
                time.sleep(0.2)
                raise AssertionError(
                    f"{self.agent} exited {self.proc.returncode}:\n" + "".join(self.lines[-30:])
                )
            time.sleep(0.05)
        raise AssertionError(f"{self.agent} did not start in {timeout}s:\n" + "".join(self.lines))

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        with contextlib.ExitStack() as stack:
            stack.enter_context(proc.stderr)
            sink = stack.enter_context(self.log_file.open("a")) if self.log_file else None
            for line in proc.stderr:
                self.lines.append(line)
                if sink is not None:
                    sink.write(line)
                    sink.flush()

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
