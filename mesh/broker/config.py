"""Render a deployment mosquitto.conf for a local run (port and paths only)."""

from __future__ import annotations

from pathlib import Path


def render_local_config(
    *,
    base: Path,
    port: int,
    run_dir: Path,
    acl_file: Path,
    password_file: Path,
    bind: str = "127.0.0.1",
    run_as_root: bool = False,
    overrides: dict[str, str] | None = None,
    extra: str = "",
) -> str:
    """The config at `base` with the listener and file paths pointed at `run_dir`."""
    text = base.read_text(encoding="utf-8")
    out: list[str] = []
    for line in text.splitlines():
        key = line.split(" ", 1)[0]
        if overrides and key in overrides:
            out.append(f"{key} {overrides[key]}")
        elif key == "listener":
            out.append(f"listener {port} {bind}")
        elif key == "password_file":
            out.append(f"password_file {password_file}")
        elif key == "acl_file":
            out.append(f"acl_file {acl_file}")
        elif key == "persistence_location":
            out.append(f"persistence_location {run_dir / 'persistence'}/")
        elif key == "log_dest":
            out.append(f"log_dest file {run_dir / 'mosquitto.log'}")
        else:
            out.append(line)
    for key, value in (overrides or {}).items():
        if not any(line.split(" ", 1)[0] == key for line in text.splitlines()):
            out.append(f"{key} {value}")
    if run_as_root:
        out.append("user root")
    if extra:  # more listeners (e.g. TLS) go last: listener options follow their listener
        out.append(extra.rstrip("\n"))
    return "\n".join(out) + "\n"


def listener_port(conf: Path) -> int | None:
    """The port of the first `listener` line of a mosquitto.conf, None when there is none."""
    found = listener(conf)
    return found[0] if found else None


def listener(conf: Path) -> tuple[int, str] | None:
    """(port, bind address) of the first `listener` line of a mosquitto.conf (address "" when
    the line has none: every interface), None when there is none."""
    for line in conf.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "listener" and parts[1].isdigit():
            return int(parts[1]), parts[2] if len(parts) > 2 else ""
    return None
