"""What mesh/transport/gmqtt_adapter.py takes from gmqtt beyond its public API, checked on the
installed release: each private attribute exists with the call shape the adapter uses, and gmqtt
still goes through it on a real connection (a hook installed there is called). A gmqtt release
that moves one fails here, naming it, instead of breaking the transport silently."""

from __future__ import annotations

import ast
import asyncio
import importlib.metadata
import inspect
import tomllib
import uuid
from pathlib import Path
from typing import Any

import gmqtt
from gmqtt.mqtt.handler import MQTTConnectError
from gmqtt.storage import PersistentStorage
from packaging.requirements import Requirement

from mesh.broker.process import MosquittoProcess
from mesh.settings import parse_broker_url
from mesh.transport import gmqtt_adapter as gm

ROOT = Path(__file__).resolve().parents[2]
ADAPTER = ROOT / "mesh" / "transport" / "gmqtt_adapter.py"
GMQTT = importlib.metadata.version("gmqtt")
# Every private gmqtt name the adapter uses; each is checked below.
CHECKED = {
    "_package_handler", "_handle_publish_packet", "_handle_puback_packet",
    "_remove_message_from_queue", "_create_connection", "_is_active", "_connection",
    "_protocol", "_transport", "_connack_properties", "_code",
}  # fmt: skip


def _moved(what: str) -> str:
    return (
        f"gmqtt {GMQTT}: {what}. mesh/transport/gmqtt_adapter.py relies on it: adapt the "
        "adapter to this release, or keep gmqtt in the range pyproject.toml pins"
    )


def _attr(obj: Any, name: str) -> Any:
    assert hasattr(obj, name), _moved(f"{type(obj).__qualname__} has no attribute {name}")
    return getattr(obj, name)


def _takes(owner: Any, name: str, *params: str) -> None:
    """`owner.name` is callable with these positional parameters (names as gmqtt's own calls
    pass them by keyword)."""
    fn = _attr(owner, name)
    assert callable(fn), _moved(f"{type(owner).__qualname__}.{name} is not callable")
    got = [p.name for p in inspect.signature(fn).parameters.values()]
    assert len(got) == len(params), _moved(
        f"{type(owner).__qualname__}.{name} takes ({', '.join(got)}), not ({', '.join(params)})"
    )
    if name == "_create_connection":  # gmqtt calls it with keywords
        assert got == list(params), _moved(f"Client._create_connection takes {got}")


def _client(storage: PersistentStorage | None = None) -> Any:
    """A gmqtt client built as mesh.transport.mqtt builds one."""
    client = gmqtt.Client(
        f"adapter-{uuid.uuid4().hex[:8]}",
        clean_session=True,
        optimistic_acknowledgement=False,
        persistent_storage=storage or PersistentStorage(),
        session_expiry_interval=0,
        receive_maximum=100,
    )
    client.set_config({"reconnect_retries": -1, "reconnect_delay": 0})
    return client


def test_the_installed_gmqtt_is_in_the_pinned_range() -> None:
    """pyproject.toml pins gmqtt with an upper bound (a new minor release may move what the
    adapter uses), and the installed one is in the range."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (req,) = [Requirement(d) for d in deps if Requirement(d).name == "gmqtt"]
    assert any(s.operator == "<" for s in req.specifier), f"{req}: no upper bound"
    assert GMQTT in req.specifier, f"gmqtt {GMQTT} is installed, pyproject.toml pins {req}"


async def test_each_private_attribute_exists_with_its_call_shape() -> None:
    client = _client()
    handler = _attr(client, "_package_handler")
    _takes(handler, "_handle_publish_packet", "cmd", "raw_packet")
    _takes(handler, "_handle_puback_packet", "cmd", "packet")
    _takes(_attr(handler, "id_generator"), "free_id", "mid")
    _takes(client, "_remove_message_from_queue", "mid")
    _takes(client, "_create_connection", "host", "port", "ssl", "clean_session", "keepalive")
    assert inspect.iscoroutinefunction(client._create_connection), _moved(
        "Client._create_connection is not a coroutine function"
    )
    assert _attr(client, "_is_active") is False, _moved("Client._is_active is not False")
    assert _attr(client, "_connection") is None, _moved("Client._connection is not None")
    assert isinstance(_attr(handler, "_connack_properties"), dict), _moved(
        "MqttPackageHandler._connack_properties is not a dict"
    )
    refused = MQTTConnectError(0x87)
    assert _attr(refused, "_code") == 0x87 == gm.refusal_code(refused), _moved(
        "MQTTConnectError(code)._code is not the code"
    )
    # What mesh.transport.mqtt._AckTrackingStorage overrides, public but relied on just as much
    _takes(PersistentStorage(), "push_message", "mid", "raw_package")
    _takes(PersistentStorage(), "remove_message_by_mid", "mid")
    _takes(PersistentStorage(), "clear")


class _Storage(PersistentStorage):  # type: ignore[misc]  # gmqtt has no types
    def __init__(self) -> None:
        super().__init__()
        self.pushed: list[int] = []
        self.removed: list[int] = []

    def push_message(self, mid: int, raw_package: bytes) -> None:
        super().push_message(mid, raw_package)
        self.pushed.append(mid)

    def remove_message_by_mid(self, mid: int) -> None:
        super().remove_message_by_mid(mid)
        self.removed.append(mid)


class _Socket:
    """Stands between gmqtt and its socket (as mesh.transport.mqtt._CoalescingWriter does)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.writes = 0
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.inner.write(data)

    def close(self) -> None:
        self.closed = True
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class _Hooks:
    """Every adapter hook installed on one client, counting what gmqtt passes through it."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.connects = 0
        self.pubacks: list[int] = []
        self.publishes = 0
        self.messages: list[bytes] = []
        self.got = asyncio.Event()
        gm.on_puback(client, self.on_puback)
        self.gmqtt_publish = gm.on_publish(client, self.on_publish)
        gm.wrap_connect(client, self.wrap)
        client.on_message = self.on_message

    def wrap(self, create: gm.CreateConnection) -> gm.CreateConnection:
        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.connects += 1
            return await create(*args, **kwargs)

        return counted

    def on_puback(self, cmd: int, packet: bytes) -> None:
        mid = int.from_bytes(packet[:2], "big")
        self.pubacks.append(mid)
        gm.release_publish_id(self.client, mid)

    def on_publish(self, cmd: int, packet: bytes) -> None:
        self.publishes += 1
        self.gmqtt_publish(cmd, packet)

    async def on_message(self, client: Any, topic: str, payload: bytes, qos: int, p: Any) -> int:
        self.messages.append(payload)
        self.got.set()
        return 0

    def socket(self) -> _Socket:
        sockets: list[_Socket] = []

        def wrap(raw: Any) -> _Socket:
            sockets.append(_Socket(raw))
            return sockets[-1]

        gm.wrap_socket(self.client, wrap)
        assert sockets, _moved("no socket under Client._connection._protocol._transport")
        connection = self.client._connection
        assert connection._protocol._transport is sockets[0], _moved(
            "MQTTProtocol._transport is not what gmqtt writes through"
        )
        assert connection._transport is sockets[0], _moved("MQTTConnection._transport moved")
        socket: _Socket = sockets[0]
        return socket


async def test_gmqtt_goes_through_each_hook_on_a_real_connection(broker: MosquittoProcess) -> None:
    """Connects, a QoS 1 publish to itself and its PUBACK, the inbound PUBLISH, the socket's
    writes and close, the CONNACK properties: each passes where the adapter hooks in."""
    url = parse_broker_url(broker.url("tester"))
    storage = _Storage()
    client = _client(storage)
    client.set_auth_credentials(url.username, url.password)
    hooks = _Hooks(client)
    await asyncio.wait_for(client.connect(url.host, url.port, version=gmqtt.constants.MQTTv50), 10)
    try:
        assert hooks.connects == 1, _moved("Client.connect() does not call _create_connection")
        assert client._is_active is True, _moved("Client.connect() does not set _is_active")
        assert gm.connack_properties(client).get("maximum_packet_size") == [262144], _moved(
            "the CONNACK's properties are not in MqttPackageHandler._connack_properties"
        )  # broker/mosquitto.conf: max_packet_size 262144
        socket = hooks.socket()
        topic = "homeassistant/status"  # the tester account may read and write it
        client.subscribe(gmqtt.Subscription(topic, qos=1, retain_handling_options=2))
        await asyncio.sleep(0.2)  # the SUBACK
        body = f"adapter-{uuid.uuid4().hex}".encode()
        client.publish(topic, body, qos=1)
        assert storage.pushed, _moved("a QoS 1 publish is not stored with push_message")
        await asyncio.wait_for(hooks.got.wait(), 10)
        await asyncio.sleep(0.2)
        assert body in hooks.messages and hooks.publishes >= 1, _moved(
            "an inbound PUBLISH does not go through MqttPackageHandler._handle_publish_packet"
        )
        assert storage.pushed[0] in hooks.pubacks, _moved(
            "a PUBACK does not go through MqttPackageHandler._handle_puback_packet"
        )
        assert storage.pushed[0] in storage.removed, _moved(
            "Client._remove_message_from_queue does not drop the stored packet"
        )
        assert socket.writes >= 2, _moved("gmqtt does not write through MQTTProtocol._transport")
        await client.disconnect()
        assert socket.closed, _moved("MQTTConnection closes its socket but not via its _transport")
        await asyncio.wait_for(client.connect(url.host, url.port), 10)
        await _reconnects_only_while_active(client, hooks)
    finally:
        await client.disconnect()


async def _reconnects_only_while_active(client: Any, hooks: _Hooks) -> None:
    """A lost socket makes gmqtt reconnect (through _create_connection), unless
    `stop_reconnecting` cleared Client._is_active."""
    before = hooks.connects
    hooks.socket().inner.abort()
    for _ in range(100):
        if hooks.connects == before + 1 and client.is_connected:
            break
        await asyncio.sleep(0.05)
    assert hooks.connects == before + 1, _moved("a lost connection is not reopened")
    gm.stop_reconnecting(client)
    hooks.socket().inner.abort()
    await asyncio.sleep(1.0)
    assert hooks.connects == before + 1, _moved("it reconnects although Client._is_active is False")


def test_every_private_name_the_adapter_uses_is_checked_here() -> None:
    """A new private access in the adapter needs its check above."""
    used = set()
    for node in ast.walk(ast.parse(ADAPTER.read_text())):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            used.add(node.attr)
        elif isinstance(node, ast.Call) and ast.unparse(node.func) in ("getattr", "setattr"):
            name = node.args[1]
            if isinstance(name, ast.Constant) and str(name.value).startswith("_"):
                used.add(str(name.value))
    assert used - CHECKED == set(), f"unchecked private gmqtt names: {sorted(used - CHECKED)}"
    assert CHECKED - used == set(), f"checked but no longer used: {sorted(CHECKED - used)}"
