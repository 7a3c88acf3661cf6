"""Broker connections: the `Transport` protocol, MQTT v5 on gmqtt, and an in-memory twin."""

from mesh.transport.base import (
    Admission,
    ConnectHandler,
    DropHandler,
    Inbound,
    MessageHandler,
    Transport,
    Will,
)
from mesh.transport.memory import MemoryBroker, MemoryTransport
from mesh.transport.mqtt import MqttTransport, publish_packet_size

__all__ = [
    "Admission",
    "ConnectHandler",
    "DropHandler",
    "Inbound",
    "MemoryBroker",
    "MemoryTransport",
    "MessageHandler",
    "MqttTransport",
    "Transport",
    "Will",
    "publish_packet_size",
]
