"""compose.yaml run for real: rootful podman, podman-compose, local stand-in images.

No registry is reachable here, so the images compose.yaml names are built locally as stand-ins
(tests/deploy/standins/: a `debootstrap --variant=minbase` Debian bookworm from the machine's apt
mirror or LIFEOPS_DEBIAN_MIRROR, imported into podman, plus Debian's packages), each with the
conventions compose.yaml relies on:

- `python:3.11-slim` (the Dockerfile's base): Python 3.11 as `python`/`pip` in /usr/local/bin,
  `useradd`; pip may install into the system.
- `eclipse-mosquitto:2.0`: Mosquitto 2.0.11 started as root from /mosquitto/config/mosquitto.conf,
  dropping to user mosquitto uid/gid 1883; /mosquitto/data owned by it; `nc` for the health check.
- `postgres:16` and `timescale/timescaledb:latest-pg16`: PostgreSQL 15 (Debian's) initialised from
  POSTGRES_USER/PASSWORD/DB in /var/lib/postgresql/data, scram logins from the network,
  `pg_isready` on PATH for the health check.
- `prom/prometheus:v2.53.0`: Prometheus 2.42 (Debian's) with the official entrypoint and flags
  (/etc/prometheus/prometheus.yml, data in /prometheus), user nobody, `wget` for the health check.
- Home Assistant is left out (nothing in the stack depends on it).

The stand-ins are cached in podman's own storage, keyed on their inputs (the files in standins/,
the apt mirror, the machine's CA bundle); the agents' image is built from the Dockerfile with
podman's layer cache. podman-compose 1.6 starts services without waiting for `service_healthy` on
podman 4.3, and podman runs no health checks on a timer without systemd: `Stack.up` starts the
services one by one in compose's dependency order and runs their health checks itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from lifeops_mesh.tools.doctor.compose import interpolate
from tests.support.homeassistant import debian_mirror

ROOT = Path(__file__).resolve().parents[2]
STANDINS = Path(__file__).resolve().parent / "standins"
CONTAINERS_CONF = STANDINS / "containers.conf"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
SUITE = "bookworm"
LABEL = "lifeops.standin.key"
# stand-in Containerfile -> the names compose.yaml (and the Dockerfile) use
STANDIN_TAGS = {
    "python": ["docker.io/library/python:3.11-slim"],
    "mosquitto": ["docker.io/library/eclipse-mosquitto:2.0"],
    "postgres": ["docker.io/library/postgres:16", "docker.io/timescale/timescaledb:latest-pg16"],
    "prometheus": ["docker.io/prom/prometheus:v2.53.0"],
}
AGENT_IMAGE = "localhost/lifeops-mesh:latest"
PORT_VARS = (
    "LIFEOPS_MQTT_PORT",
    "LIFEOPS_STATS_METRICS_PORT",
    "LIFEOPS_LIFEOPS_METRICS_PORT",
    "LIFEOPS_HA_BRIDGE_METRICS_PORT",
    "LIFEOPS_HA_PORT",
    "LIFEOPS_PROMETHEUS_PORT",
)
LEFT_OUT = {"homeassistant"}


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def podman(*args: str, timeout: float = 600, check: bool = True) -> str:
    """`podman ARGS` with the test's containers.conf; its stdout (stderr in the error)."""
    proc = subprocess.run(
        ["nice", "podman", *args],
        env=podman_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args)}: exit {proc.returncode}\n{proc.stderr}")
    return proc.stdout


def podman_rc(*args: str, timeout: float = 60) -> int:
    return subprocess.run(
        ["podman", *args], env=podman_env(), capture_output=True, timeout=timeout, check=False
    ).returncode


def image_label(image: str) -> str | None:
    out = podman(
        "image", "inspect", "--format", f'{{{{index .Labels "{LABEL}"}}}}', image, check=False
    )
    return out.strip() or None


def standin_key(mirror: str) -> str:
    """What the stand-ins are built from: their files, the mirror and the machine's CA bundle."""
    h = hashlib.sha256(f"{SUITE} {mirror}\n".encode())
    for f in sorted(STANDINS.iterdir()):
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    h.update(CA_BUNDLE.read_bytes() if CA_BUNDLE.exists() else b"")
    return h.hexdigest()[:16]


@contextlib.contextmanager
def build_lock() -> Iterator[None]:
    """One builder at a time on this machine (the tags are shared)."""
    with open("/var/tmp/lifeops-standins.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def ensure_standins() -> str:
    """Build the stand-ins unless podman holds them for these inputs; 'cached' or 'built'."""
    mirror = debian_mirror()
    key = standin_key(mirror)
    tags = [t for names in STANDIN_TAGS.values() for t in names]
    with build_lock():
        if all(image_label(t) == key for t in tags):
            return "cached"
        debian = f"localhost/lifeops-standin/debian:{key}"
        if image_label(debian) != key:
            _debootstrap(debian, mirror, key)
        with tempfile.TemporaryDirectory(dir="/var/tmp") as ctx:
            for f in STANDINS.iterdir():
                shutil.copy(f, ctx)
            shutil.copy(CA_BUNDLE, Path(ctx) / "host-ca-certificates.crt")
            base = f"localhost/lifeops-standin/base:{key}"
            _build(ctx, "base", [base], key, f"DEBIAN={debian}")
            for name, names in STANDIN_TAGS.items():
                _build(ctx, name, names, key, f"BASE={base}")
        _drop_stale(key)
    return "built"


def _debootstrap(tag: str, mirror: str, key: str) -> None:
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        subprocess.run(
            ["nice", "debootstrap", "--variant=minbase", SUITE, str(rootfs), mirror],
            check=True,
            capture_output=True,
            timeout=1200,
        )
        tarball = Path(tmp) / "rootfs.tar"
        subprocess.run(
            ["tar", "-C", str(rootfs), "-cf", str(tarball), "."], check=True, timeout=600
        )
        podman("import", "--change", f"LABEL {LABEL}={key}", str(tarball), tag)


def _build(ctx: str, name: str, tags: list[str], key: str, arg: str) -> None:
    tag_args = [a for t in tags for a in ("-t", t)]
    podman(
        "build", "-q", "--label", f"{LABEL}={key}", "--build-arg", arg,
        "-f", f"{ctx}/Containerfile.{name}", *tag_args, ctx, timeout=1800,
    )  # fmt: skip


def _drop_stale(key: str) -> None:
    """Old generations of the stand-ins' own base images (other keys) go."""
    out = podman("images", "--format", "{{.Repository}}:{{.Tag}}", "localhost/lifeops-standin/*")
    for ref in out.split():
        if not ref.endswith(f":{key}"):
            podman("rmi", ref, check=False)


def build_agent_image() -> None:
    """The agents' image from the Dockerfile, as `docker compose build` would (layer cache)."""
    podman("build", "-q", "-t", AGENT_IMAGE, str(ROOT), timeout=1800)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Stack:
    """One compose project of compose.yaml under podman-compose, on free host ports."""

    def __init__(self, project: str) -> None:
        self.project = project
        self.ports = {var: free_port() for var in PORT_VARS}
        self.env = {**podman_env(), **{k: str(v) for k, v in self.ports.items()}}
        text = interpolate((ROOT / "compose.yaml").read_text(), self.env)
        self.spec: dict[str, Any] = yaml.safe_load(text)

    def compose(self, *args: str, profiles: tuple[str, ...] = (), timeout: float = 300) -> str:
        """podman-compose ARGS for this project; stdout, or RuntimeError with its output."""
        cmd = [str(Path(sys.executable).parent / "podman-compose"), "-p", self.project]
        cmd += [a for p in profiles for a in ("--profile", p)]
        proc = subprocess.run(
            ["nice", *cmd, *args], cwd=ROOT, env=self.env, capture_output=True, text=True,
            timeout=timeout, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args)}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
            )
        return proc.stdout

    def order(self, profiles: tuple[str, ...] = ()) -> list[str]:
        """The services of `profiles` (and those without one) in depends_on order."""
        services = self.spec["services"]
        chosen = [
            n for n, s in services.items()
            if n not in LEFT_OUT and (not s.get("profiles") or set(s["profiles"]) & set(profiles))
        ]  # fmt: skip
        out: list[str] = []

        def visit(name: str) -> None:
            if name not in out:
                for dep in services[name].get("depends_on") or {}:
                    visit(dep)
                out.append(name)

        for name in chosen:
            visit(name)
        return out

    def container(self, service: str) -> str:
        out = podman(
            "ps", "-a", "--format", "{{.Names}}",
            "--filter", f"label=io.podman.compose.project={self.project}",
            "--filter", f"label=com.docker.compose.service={service}",
        )  # fmt: skip
        names = out.split()
        if len(names) != 1:
            raise RuntimeError(f"{service}: containers {names}")
        return names[0]

    def up(self, services: list[str], profiles: tuple[str, ...] = ()) -> None:
        """Each service started after what it depends on is healthy (or done, for one-shots)."""
        for name in services:
            self.compose("up", "-d", "--no-deps", name, profiles=profiles)
            svc = self.spec["services"][name]
            if svc.get("restart") == "no":
                self.wait_done(name)
            elif not (svc.get("healthcheck") or {}).get("disable"):
                self.wait_healthy(name)

    def wait_done(self, service: str, timeout: float = 120) -> None:
        code = podman("wait", self.container(service), timeout=timeout).strip()
        if code != "0":
            raise RuntimeError(f"{service} exited {code}: {self.logs(service)}")

    def wait_healthy(self, service: str, timeout: float = 180) -> None:
        ctr = self.container(service)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if podman_rc("healthcheck", "run", ctr) == 0:
                return
            state = podman("inspect", "--format", "{{.State.Status}}", ctr).strip()
            if state not in ("running", "created", "configured"):
                raise RuntimeError(f"{service} is {state}: {self.logs(service)}")
            time.sleep(1)
        raise RuntimeError(f"{service} not healthy in {timeout} s: {self.logs(service)}")

    def logs(self, service: str) -> str:
        return podman("logs", "--tail", "30", self.container(service), check=False)

    def volume_file(self, volume: str, name: str) -> Path:
        mount = podman(
            "volume", "inspect", "--format", "{{.Mountpoint}}", f"{self.project}_{volume}"
        )
        return Path(mount.strip()) / name

    def exec(self, service: str, *cmd: str) -> str:
        return podman("exec", self.container(service), *cmd, timeout=60)
