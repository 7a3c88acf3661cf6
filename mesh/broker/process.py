"""Run a Mosquitto from a deployment config and ACL on loopback (for `up`, tests, benchmarks)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from mesh.broker.accounts import PASSWD, ensure_accounts
from mesh.broker.config import render_local_config
from mesh.errors import ConfigError

INSTALL_HINT = (
    "mosquitto not found on PATH: install the Debian packages 'mosquitto' and "
    "'mosquitto-clients' (apt-get install mosquitto mosquitto-clients)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def local_host(bind: str) -> str:
    """Where a client on this machine reaches a listener bound to `bind`: the loopback address
    for a wildcard bind (every interface), else the address itself."""
    if bind in ("", "0.0.0.0"):
        return "127.0.0.1"
    if bind == "::":
        return "::1"
    return bind


class MosquittoProcess:
    """A Mosquitto on `bind`:`port` (default 127.0.0.1) whose state lives in `run_dir`."""

    def __init__(
        self,
        run_dir: Path,
        *,
        config: Path,
        acl: str,
        principals: Sequence[str],
        port: int | None = None,
        overrides: dict[str, str] | None = None,
        extra_acl: str = "",
        extra_accounts: tuple[str, ...] = (),
        extra_config: str = "",
        bind: str = "127.0.0.1",
    ) -> None:
        self.run_dir = run_dir
        self.bind = bind  # the listener's address: 0.0.0.0 (or ::) for every interface
        self.port = port or free_port()
        self.config = config  # the deployment mosquitto.conf this one is rendered from
        self.acl = acl
        self.principals = list(principals)
        self.proc: subprocess.Popen[bytes] | None = None
        self.credentials: dict[str, str] = {}
        self.overrides = overrides  # config lines to change (tests of limits only)
        self.extra_acl = extra_acl  # appended to the ACL (benchmark accounts only)
        self.extra_accounts = extra_accounts
        self.extra_config = extra_config  # appended to the config (e.g. a TLS listener)

    @property
    def log_file(self) -> Path:
        return self.run_dir / "mosquitto.log"

    @property
    def host(self) -> str:
        """The address this machine's own clients connect to."""
        return local_host(self.bind)

    def url(self, user: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mqtt://{user}:{self.credentials[user]}@{host}:{self.port}"

    def prepare(self) -> None:
        binary = shutil.which("mosquitto") or (
            "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
        )
        if binary is None:
            raise ConfigError(INSTALL_HINT)
        self._binary = binary
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "persistence").mkdir(exist_ok=True)
        self.credentials = ensure_accounts(self.run_dir, [*self.principals, *self.extra_accounts])
        acl = self.run_dir / "acl"
        text = self.acl + ("\n" + self.extra_acl if self.extra_acl else "")
        acl.write_text(text, encoding="utf-8")
        conf = render_local_config(
            base=self.config,
            port=self.port,
            run_dir=self.run_dir,
            acl_file=acl,
            password_file=self.run_dir / PASSWD,
            bind=self.bind,
            # As root, Mosquitto drops to user `mosquitto`, which cannot reach files under a
            # private home or temp dir (persistence then fails silently). This broker belongs to
            # the user who started it, so it keeps that user's rights.
            run_as_root=os.geteuid() == 0,
            overrides=self.overrides,
            extra=self.extra_config,
        )
        (self.run_dir / "mosquitto.conf").write_text(conf, encoding="utf-8")

    def start(self, timeout: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        self.prepare()
        self.proc = subprocess.Popen(
            [self._binary, "-c", str(self.run_dir / "mosquitto.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                log = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
                raise ConfigError(
                    f"mosquitto exited with {self.proc.returncode}: {err}{log[-2000:]}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), timeout=0.2),
            ):
                return
            time.sleep(0.05)
        self.kill()
        raise ConfigError(f"mosquitto did not listen on port {self.port} within {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        """Clean stop (SIGTERM): Mosquitto saves its persistence file."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._forget()

    def kill(self) -> None:
        """SIGKILL: whatever came after the last autosave is lost."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._forget()

    def _forget(self) -> None:
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None

    def __enter__(self) -> MosquittoProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
