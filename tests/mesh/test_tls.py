"""mqtts://: the documented TLS listener, with a CA the test makes, used by an agent and a tool;
a client that does not trust the CA is refused in one clear line."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lifeops_contract import contract
from lifeops_contract.schemas import CharacterGetRequest
from lifeops_mesh import registry
from lifeops_mesh.broker import local_broker
from mesh import MeshClient, RequestTimeout, TransportError, build_settings, mqtt_agent
from mesh.broker.process import MosquittoProcess, free_port
from tests.conftest import require_mosquitto


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca_and_server_cert(directory: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, server key): a CA of this test's own and a
    certificate for 127.0.0.1 signed by it."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", "/CN=lifeops-test-ca", "-keyout", "ca.key", "-out", "ca.crt",
             cwd=directory)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
             "-keyout", "server.key", "-out", "server.csr", cwd=directory)  # fmt: skip
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.crt",
             cwd=directory)  # fmt: skip
    return directory / "ca.crt", directory / "server.crt", directory / "server.key"


@pytest.fixture(scope="module")
def tls_broker(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[MosquittoProcess, int, Path]]:
    """The project's broker with the TLS listener of broker/mosquitto.conf turned on."""
    require_mosquitto()
    work = tmp_path_factory.mktemp("tls")
    ca, cert, key = make_ca_and_server_cert(work / "tls")
    port = free_port()
    listener = (
        f"listener {port} 127.0.0.1\nprotocol mqtt\ncafile {ca}\ncertfile {cert}\n"
        f"keyfile {key}\ntls_version tlsv1.2\n"
    )
    proc = local_broker(work / "broker", extra_config=listener)
    proc.start()
    yield proc, port, ca
    proc.stop()


def test_the_deployment_config_documents_the_tls_listener() -> None:
    """broker/mosquitto.conf carries the TLS listener (commented out) with its three files."""
    conf = (Path(__file__).resolve().parents[2] / "broker" / "mosquitto.conf").read_text()
    for line in ("#listener 8883", "#cafile ", "#certfile ", "#keyfile "):
        assert line in conf


async def test_an_agent_and_a_tool_over_mqtts(
    tls_broker: tuple[MosquittoProcess, int, Path], tmp_path: Path
) -> None:
    """Stats connects with an mqtts:// URL and LIFEOPS_BROKER_CA_FILE; `lifeops-mesh request`
    reaches it over TLS; without the CA, the tool says the certificate is not trusted."""
    broker, port, ca = tls_broker
    password = broker.credentials["stats"]
    env = {"LIFEOPS_BROKER_CA_FILE": str(ca)}
    settings = build_settings(
        "stats",
        broker_url=f"mqtts://stats:{password}@127.0.0.1:{port}",
        db_url=f"sqlite:///{tmp_path / 's.db'}",
        env=env,
    )
    assert settings.broker.tls and settings.broker.ca_file == str(ca)
    agent = mqtt_agent(settings, registry.build(settings))
    await agent.start()
    try:
        tester = f"mqtts://tester:{broker.credentials['tester']}@127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "lifeops_mesh", "request", "character_get",
               '{"user_id": "nobody-tls"}', "--broker", tester]  # fmt: skip
        ok = await asyncio.to_thread(
            subprocess.run,
            cmd,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **env},
        )
        assert ok.returncode == 1 and '"code":"not_found"' in ok.stdout, ok.stderr
        plain_env = {k: v for k, v in os.environ.items() if k != "LIFEOPS_BROKER_CA_FILE"}
        refused = await asyncio.to_thread(
            subprocess.run, cmd, capture_output=True, text=True, timeout=60, env=plain_env
        )
        assert refused.returncode == 2 and "certificate verify failed" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    finally:
        await agent.stop()


async def test_the_plain_port_and_tls_port_share_accounts_and_acl(
    tls_broker: tuple[MosquittoProcess, int, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Accounts apply to the TLS listener too (per_listener_settings false): a wrong password
    is refused, the right one connects."""
    broker, port, ca = tls_broker
    monkeypatch.setenv("LIFEOPS_BROKER_CA_FILE", str(ca))
    wrong = MeshClient(f"mqtts://tester:wrong@127.0.0.1:{port}", contract())
    with pytest.raises(TransportError, match="refused"):
        await wrong.connect(timeout=5)
    await wrong.close()
    url = f"mqtts://tester:{broker.credentials['tester']}@127.0.0.1:{port}"
    async with MeshClient(url, contract()) as good:
        with pytest.raises(RequestTimeout):
            await good.request("character_get", CharacterGetRequest(user_id="x"), timeout=0.5)
