"""gmqtt at arm's length: everything the transport takes from gmqtt beyond its public API.

gmqtt has no hooks for what mesh.transport.mqtt adds (PUBACK reason codes awaited per message,
admission of a QoS 0 PUBLISH before it is parsed, paced reconnects that stop once disconnected,
coalesced socket writes, the broker's CONNACK limits), so the transport reaches into gmqtt's
private attributes, here and nowhere else. Each function names the attribute it relies on;
tests/mesh/test_gmqtt_adapter.py checks every one of them on the installed gmqtt (the supported
range is pinned in pyproject.toml), so a release that moves one fails that test by name instead
of breaking the transport silently. tests/test_layout.py fails on a private gmqtt name used
anywhere else.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import gmqtt

PacketHandler = Callable[[int, bytes], None]
"""gmqtt's handler of one packet type: (fixed header byte, the packet after it)."""
CreateConnection = Callable[..., Awaitable[Any]]


def on_puback(client: gmqtt.Client, handle: PacketHandler) -> None:
    """`handle` gets every PUBACK instead of gmqtt, which drops its reason code
    (MqttPackageHandler._handle_puback_packet); it should call `release_publish_id`."""
    client._package_handler._handle_puback_packet = handle


def release_publish_id(client: gmqtt.Client, mid: int) -> None:
    """What gmqtt does with a PUBACK: the packet id is free again and the stored packet goes
    (MqttPackageHandler.id_generator.free_id, Client._remove_message_from_queue)."""
    client._package_handler.id_generator.free_id(mid)
    client._remove_message_from_queue(mid)


def on_publish(client: gmqtt.Client, admit: PacketHandler) -> PacketHandler:
    """`admit` gets every inbound PUBLISH before gmqtt parses it or starts a task for it
    (MqttPackageHandler._handle_publish_packet); returns gmqtt's own handler, which `admit`
    calls for the packets it lets through."""
    handler = client._package_handler
    gmqtt_handles: PacketHandler = handler._handle_publish_packet
    handler._handle_publish_packet = admit
    return gmqtt_handles


def wrap_connect(
    client: gmqtt.Client, wrap: Callable[[CreateConnection], CreateConnection]
) -> None:
    """Every connection gmqtt opens (the first and each reconnect) goes through `wrap` of its
    own opener (Client._create_connection(host, port, ssl, clean_session, keepalive))."""
    client._create_connection = wrap(client._create_connection)


def stop_reconnecting(client: gmqtt.Client) -> None:
    """gmqtt's reconnect loop ends at its next turn (Client._is_active, which gmqtt clears
    only in disconnect())."""
    client._is_active = False


def wrap_socket(client: gmqtt.Client, wrap: Callable[[Any], Any]) -> None:
    """Put `wrap(socket transport)` between the live connection and its socket, for writes
    (MQTTProtocol._transport) and for closing (MQTTConnection._transport, so what the wrapper
    buffers goes out before the socket closes). Nothing when not connected, or when `wrap`
    returns the socket itself (already wrapped)."""
    connection = client._connection
    protocol = getattr(connection, "_protocol", None)
    raw = getattr(protocol, "_transport", None)
    if protocol is None or raw is None:
        return
    writer = wrap(raw)
    if writer is not raw:
        protocol._transport = writer
        connection._transport = writer


def connack_properties(client: gmqtt.Client) -> dict[str, Any]:
    """The properties of the broker's last CONNACK, each a list of values, e.g.
    {"receive_maximum": [20]} (MqttPackageHandler._connack_properties)."""
    properties: dict[str, Any] = client._package_handler._connack_properties
    return properties


def refusal_code(exc: gmqtt.mqtt.handler.MQTTConnectError) -> int | None:
    """The CONNACK reason code of a refused connect (MQTTConnectError._code)."""
    code: int | None = getattr(exc, "_code", None)
    return code
