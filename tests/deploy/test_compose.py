"""compose.yaml, checked without a Docker engine: Compose-spec parse plus cross-references."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import compose_spec
import pytest
import yaml

from lifeops_contract import contract
from lifeops_mesh.tools.doctor.compose import interpolate

ROOT = Path(__file__).resolve().parents[2]
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


def load(text: str | None = None, env: dict[str, str] | None = None) -> dict[str, Any]:
    """compose.yaml as `docker compose` sees it: variables interpolated, then checked."""
    raw = text or (ROOT / "compose.yaml").read_text()
    c = compose_spec.PyCompose.from_yaml(interpolate(raw, env or {}))
    c.to_spec()  # validates every key against the Compose specification
    c.validate()
    return c.to_dict()


def test_compose_file_follows_the_specification() -> None:
    """compose.yaml parses against the Compose spec; a misspelled key is reported."""
    spec = load()
    assert {
        "mosquitto",
        "stats",
        "lifeops",
        "stats-db",
        "lifeops-db",
        "homeassistant",
        "prometheus",
    } <= set(spec["services"])
    broken = (ROOT / "compose.yaml").read_text().replace("depends_on:", "depend_on:", 1)
    with pytest.raises(ValueError, match="depend_on"):
        load(broken)


def test_health_checks_start_order_network_and_volumes() -> None:
    """Every long-running service has a health check; dependencies exist and wait for health;
    one network; named volumes are declared."""
    spec = load()
    services = spec["services"]
    for name, svc in services.items():
        hc = svc.get("healthcheck", {})
        if svc.get("restart") != "no":
            assert hc.get("test") and not hc.get("disable"), f"{name} has no health check"
        nets = svc.get("networks")
        assert nets == ["mesh"] or list(nets) == ["mesh"], f"{name} is not on the mesh network"
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on missing {dep}"
            assert cond["condition"] in CONDITIONS
            if services[dep].get("restart") != "no":
                assert cond["condition"] == "service_healthy", f"{name} -> {dep}"
        for vol in svc.get("volumes", []):
            source = vol.split(":")[0] if isinstance(vol, str) else vol["source"]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in spec["volumes"], f"{name} uses undeclared volume {source}"
    assert set(spec["networks"]) == {"mesh"}


def _agent_services(spec: dict[str, Any]) -> dict[str, tuple[str, str]]:
    out = {}
    for name, svc in spec["services"].items():
        cmd = svc.get("command") or []
        if len(cmd) >= 2 and cmd[0] == "run":
            out[name] = (cmd[1], str(svc["environment"]["LIFEOPS_METRICS_PORT"]))
    return out


def test_every_agent_is_built_from_one_image_and_scraped() -> None:
    """Each agent service runs `lifeops-mesh run <agent>` from the one Dockerfile, and
    Prometheus has a scrape target for each."""
    spec = load()
    agents = _agent_services(spec)
    assert {a for a, _ in agents.values()} == {"stats", "lifeops", "ha_bridge"}
    targets = scrape_targets()
    for name, (_, port) in agents.items():
        svc = spec["services"][name]
        assert svc["build"] in (".", {"context": "."}) and svc["image"] == "lifeops-mesh:latest"
        nets = svc["networks"]
        names = (
            [name, *(a for n in nets.values() for a in n.get("aliases", []))]
            if isinstance(nets, dict)
            else [name]
        )
        assert {f"{n}:{port}" for n in names} & targets, f"no scrape target for {name}"
        assert svc["environment"]["LIFEOPS_BROKER_URL"].startswith("mqtt://")
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.count("ENTRYPOINT") == 1
    import tomllib

    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"
    ]["find"]["include"]
    for pkg in (p.rstrip("*") for p in packages):
        assert f"COPY {pkg} ./{pkg}" in dockerfile, f"the image lacks the package {pkg}"


def scrape_targets(*, static_only: bool = False) -> set[str]:
    """host:port of every target deploy/prometheus.yml names: static ones, and DNS-discovered
    ones (`dns_sd_configs` names, type A, with their port)."""
    conf = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    out: set[str] = set()
    for job in conf["scrape_configs"]:
        for static in job.get("static_configs", []):
            out.update(static["targets"])
        for dns in [] if static_only else job.get("dns_sd_configs", []):
            assert dns["type"] == "A" and dns["port"]
            out.update(f"{n}:{dns['port']}" for n in dns["names"])
    return out


def test_prometheus_scrapes_only_what_runs() -> None:
    """No static target is a service of a profile (it would be down on the default stack); the
    `scale` instances are found by DNS under the alias every Stats instance has."""
    spec = load()
    in_profiles = {n for n, s in spec["services"].items() if s.get("profiles")}
    for target in scrape_targets(static_only=True):
        assert target.split(":")[0] in spec["services"], target
        assert target.split(":")[0] not in in_profiles, f"{target} runs only with a profile"
    stats = [
        s for s in spec["services"].values() if (s.get("command") or [""])[:2] == ["run", "stats"]
    ]
    for svc in stats:
        assert "stats-instances:9181" in {f"{a}:9181" for a in svc["networks"]["mesh"]["aliases"]}
    assert "stats-instances:9181" in scrape_targets()


def test_scale_profile_runs_more_stats_agents_on_a_shared_subscription() -> None:
    """The `scale` profile adds Stats agents with their own instance names, all in one shared
    subscription group, on the same PostgreSQL."""
    spec = load()
    stats = {
        n: s
        for n, s in spec["services"].items()
        if (s.get("command") or [None, None])[:2] == ["run", "stats"]
    }
    assert len(stats) == 3
    instances = set()
    for svc in stats.values():
        cmd = svc["command"]
        assert cmd[cmd.index("--shared") + 1] == "stats"
        instances.add(cmd[cmd.index("--instance") + 1])
        assert svc["environment"]["LIFEOPS_DB_URL"].startswith("postgresql://")
    assert len(instances) == 3
    assert sum(1 for s in stats.values() if "scale" in (s.get("profiles") or [])) == 2


def test_broker_config_mounts_match_the_config_paths() -> None:
    """The paths in broker/mosquitto.conf are where compose mounts the files."""
    conf = (ROOT / "broker" / "mosquitto.conf").read_text()
    mounts = load()["services"]["mosquitto"]["volumes"]
    targets = {(v.split(":")[1] if isinstance(v, str) else v["target"]) for v in mounts}
    assert "acl_file /mosquitto/secrets/acl" in conf  # copied there 0600 by broker-accounts
    cmd = load()["services"]["broker-accounts"]["command"]
    assert cmd[cmd.index("--acl") + 1] == "/config/acl"
    assert "./broker/acl:/config/acl:ro" in load()["services"]["broker-accounts"]["volumes"]
    assert "/mosquitto/secrets" in targets and "password_file /mosquitto/secrets/passwd" in conf
    assert "/mosquitto/data" in targets and "persistence_location /mosquitto/data/" in conf


def _sources(svc: dict[str, Any]) -> list[str]:
    return [
        (v.split(":")[0] if isinstance(v, str) else v["source"]) for v in svc.get("volumes", [])
    ]


def test_each_service_gets_only_its_own_credentials() -> None:
    """Least privilege: one volume per account; every agent mounts exactly its own, the broker
    only the password hashes, nobody else any; the accounts service writes them without a
    password on any command line."""
    spec = load()
    accounts = {v for v in spec["volumes"] if v.startswith("account-")}
    principals = set(contract().meta.principals)
    assert accounts == {f"account-{p}" for p in principals}
    for name, (agent, _) in _agent_services(spec).items():
        mounted = [s for s in _sources(spec["services"][name]) if s.startswith("account")]
        assert mounted == [f"account-{agent}"], f"{name} mounts {mounted}"
        env = spec["services"][name]["environment"]
        assert env["LIFEOPS_CREDENTIALS_FILE"] == "/secrets/credentials.toml"
    for name in ("cli", "test-runner"):
        mounted = [s for s in _sources(spec["services"][name]) if s.startswith("account")]
        assert mounted == ["account-tester", "account-doctor"], f"{name} mounts {mounted}"
        env = spec["services"][name]["environment"]
        assert "@" not in env["LIFEOPS_TOOL_BROKER_URL"]  # no user, no password in the URL
        assert env["LIFEOPS_CREDENTIALS_FILE"].split(":") == [
            "/secrets/tester/credentials.toml",
            "/secrets/doctor/credentials.toml",
        ]
    for name, svc in spec["services"].items():
        if name in {*_agent_services(spec), "broker-accounts", "cli", "test-runner"}:
            continue
        assert not [s for s in _sources(svc) if s.startswith(("account", "accounts-admin"))], name
    assert _sources(spec["services"]["mosquitto"]).count("broker-passwd") == 1
    cmd = spec["services"]["broker-accounts"]["command"]
    assert "--accounts-dir" in cmd and "-b" not in cmd


def test_published_ports_are_loopback_unless_asked() -> None:
    """Broker, metrics, HA and Prometheus ports listen on 127.0.0.1; LIFEOPS_PUBLISH_HOST opens
    them (as `docker compose` interpolates it)."""
    for env, host in (({}, "127.0.0.1"), ({"LIFEOPS_PUBLISH_HOST": "0.0.0.0"}, "0.0.0.0")):
        spec = load(env=env)
        published = [p for svc in spec["services"].values() for p in svc.get("ports", [])]
        assert published, "nothing published"
        for p in published:
            text = p if isinstance(p, str) else f"{p.get('host_ip')}:{p['published']}"
            assert text.startswith(f"{host}:"), text


PORT_VARS = {
    "mosquitto": ("LIFEOPS_MQTT_PORT", 1883),
    "stats": ("LIFEOPS_STATS_METRICS_PORT", 9181),
    "lifeops": ("LIFEOPS_LIFEOPS_METRICS_PORT", 9182),
    "ha-bridge": ("LIFEOPS_HA_BRIDGE_METRICS_PORT", 9183),
    "homeassistant": ("LIFEOPS_HA_PORT", 8123),
    "prometheus": ("LIFEOPS_PROMETHEUS_PORT", 9090),
}


def _published(spec: dict[str, Any], service: str) -> list[tuple[str, int]]:
    out = []
    for p in spec["services"][service].get("ports", []):
        if isinstance(p, str):
            host_port, _, target = p.rpartition(":")
            out.append((host_port.rpartition(":")[2], int(target)))
        else:
            out.append((str(p["published"]), int(p["target"])))
    return out


def test_every_published_port_is_configurable() -> None:
    """Each published host port has its own variable (a machine with Mosquitto on 1883 moves
    the stack's broker elsewhere); the container side stays."""
    spec = load()
    published = {n for n, s in spec["services"].items() if s.get("ports")}
    assert published == set(PORT_VARS)
    moved = {var: str(20000 + i) for i, (var, _) in enumerate(PORT_VARS.values())}
    spec_moved = load(env=moved)
    for service, (var, port) in PORT_VARS.items():
        assert _published(spec, service) == [(str(port), port)]
        assert _published(spec_moved, service) == [(moved[var], port)]


def test_services_run_as_non_root() -> None:
    """The image runs as uid 10001; only the one-shot accounts step is root (it writes every
    account's volume for its owner: agents 10001, broker 1883)."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "USER 10001:10001" in dockerfile.splitlines()
    spec = load()
    rooted = {n for n, s in spec["services"].items() if str(s.get("user", "")).startswith("0")}
    assert rooted == {"broker-accounts"}
    cmd = spec["services"]["broker-accounts"]["command"]
    assert cmd[cmd.index("--accounts-owner") + 1] == "10001:10001"
    assert cmd[cmd.index("--passwd-owner") + 1] == "1883:1883"


def test_test_profile_runs_the_integration_checks() -> None:
    """`--profile test run --rm test-runner` runs the black-box checks after the agents are
    healthy; the `cli` service carries the operator tools."""
    spec = load()
    runner = spec["services"]["test-runner"]
    assert runner["profiles"] == ["test"] and runner["command"][0] == "integration-test"
    for dep in ("mosquitto", "stats", "lifeops", "ha-bridge"):
        assert runner["depends_on"][dep]["condition"] == "service_healthy"
    assert "cli" in spec["services"]["cli"]["profiles"]


def test_accounts_step_writes_private_files_for_their_users(tmp_path: Path) -> None:
    """What broker-accounts runs: every account's directory 0700 and file 0600, owned by the
    services' user; the broker's passwd and ACL (a copy of broker/acl) 0600, owned by the
    broker's user: nothing world-readable, which Mosquitto 2.0.19+ would refuse."""
    import os
    import stat

    from lifeops_mesh.cli import main

    root = os.geteuid() == 0
    agents, broker = ("10001:10001", "1883:1883") if root else (f"{os.getuid()}:{os.getgid()}",) * 2
    acl = tmp_path / "acl-src"
    acl.write_text((ROOT / "broker" / "acl").read_text())
    acl.chmod(0o644)
    args = ["broker", "passwords", "--dir", str(tmp_path / "admin"), "--accounts-dir"]
    args += [str(tmp_path / "accounts"), "--passwd-owner", broker, "--accounts-owner", agents]
    assert main([*args, "--acl", str(acl)]) == 0
    accounts = tmp_path / "accounts"

    def owner_mode(p: Path) -> tuple[str, int]:
        st = p.stat()
        return f"{st.st_uid}:{st.st_gid}", stat.S_IMODE(st.st_mode)

    for principal in contract().meta.principals:
        assert owner_mode(accounts / principal) == (agents, 0o700), principal
        assert owner_mode(accounts / principal / "credentials.toml") == (agents, 0o600)
    for f in ("passwd", "acl"):
        assert owner_mode(accounts / "mosquitto" / f) == (broker, 0o600), f
    assert (accounts / "mosquitto" / "acl").read_text() == acl.read_text()
    assert main([*args, "--acl", str(tmp_path / "missing")]) == 2  # a clear error, exit 2


def test_doctor_accepts_dns_discovered_instances_only_by_their_alias(tmp_path: Path) -> None:
    """doctor's compose review: the Stats instances are scraped through the alias Prometheus
    resolves; an instance without it is reported as not scraped."""
    import datetime as dt

    from lifeops_mesh.tools.doctor.compose import compose_checks
    from lifeops_mesh.tools.doctor.report import Report

    (tmp_path / "deploy").mkdir()
    (tmp_path / "deploy" / "prometheus.yml").write_text(
        (ROOT / "deploy" / "prometheus.yml").read_text()
    )
    for broker_file in ("acl", "mosquitto.conf"):  # the mounts compose.yaml names must exist
        (tmp_path / "broker").mkdir(exist_ok=True)
        (tmp_path / "broker" / broker_file).write_text("")
    text = (ROOT / "compose.yaml").read_text()
    for name, compose_text in (("as is", text), ("no alias", _drop_alias(text, "stats-3"))):
        (tmp_path / "compose.yaml").write_text(compose_text)
        report = Report(generated_at=dt.datetime.now(dt.UTC), flow="")
        compose_checks(tmp_path / "compose.yaml", report)
        found = [f"{f.service}: {f.issue}" for f in report.issues]
        assert found == ([] if name == "as is" else ["stats-3: agent not scraped by Prometheus"])


def _drop_alias(text: str, service: str) -> str:
    head, _, tail = text.partition(f"\n  {service}:\n")
    tail = tail.replace(
        "    networks:\n      mesh:\n        aliases: [stats-instances]\n",
        "    networks: [mesh]\n",
        1,
    )
    return f"{head}\n  {service}:\n{tail}"
