"""LifeOps Mesh runtime: a library for MQTT-native agents.

Contract, codecs, transport (MQTT v5 on gmqtt, and an in-memory twin), request/response, inbox
with group commit, outbox, receipts, dead letters, retained state, store, metrics, health and
logging. It knows no agent and no application: agents and tools sit on top of it and use only
the names below.
"""

from mesh import codec, state
from mesh.agent import (
    RUNTIME_MIGRATIONS,
    Agent,
    AgentApp,
    AgentBuilder,
    availability_will,
    mqtt_agent,
    mqtt_transport,
)
from mesh.backoff import Backoff
from mesh.client import MeshClient, plain_transport
from mesh.contract import Contract, TopicEntry, check_level
from mesh.dedup import KEYLESS, NO_CLAIM, DedupRule, Keyless
from mesh.errors import (
    ConfigError,
    ContractError,
    DecodeError,
    HandlerError,
    MeshError,
    NotAuthorized,
    NotFound,
    PacketTooLarge,
    PublishRefused,
    RequestTimeout,
    StoreError,
    TransportError,
)
from mesh.handler import BatchHandler, Context, Handler, Job, Route
from mesh.keys import installation_key, keyed_uuid
from mesh.metrics import Metrics
from mesh.readback import read_retained
from mesh.receipts import ReceiptOutbox, ReceiptRecord
from mesh.rpc import TRACE_PROPERTY, Requester
from mesh.schemas import (
    Availability,
    Check,
    DeadLetter,
    ErrorInfo,
    ErrorReply,
    HealthReport,
    Payload,
    Reply,
    Transaction,
)
from mesh.settings import BrokerURL, Settings, build_settings, parse_broker_url
from mesh.store import Migration, Store, Tx, open_store, parse_db_url
from mesh.supervise import Supervisor
from mesh.transport import Inbound, MemoryBroker, MemoryTransport, MqttTransport, Transport, Will

__version__ = "0.1.0"

__all__ = [
    "KEYLESS",
    "NO_CLAIM",
    "RUNTIME_MIGRATIONS",
    "TRACE_PROPERTY",
    "Agent",
    "AgentApp",
    "AgentBuilder",
    "Availability",
    "Backoff",
    "BatchHandler",
    "BrokerURL",
    "Check",
    "ConfigError",
    "Context",
    "Contract",
    "ContractError",
    "DeadLetter",
    "DecodeError",
    "DedupRule",
    "ErrorInfo",
    "ErrorReply",
    "Handler",
    "HandlerError",
    "HealthReport",
    "Inbound",
    "Job",
    "Keyless",
    "MemoryBroker",
    "MemoryTransport",
    "MeshClient",
    "MeshError",
    "Metrics",
    "Migration",
    "MqttTransport",
    "NotAuthorized",
    "NotFound",
    "PacketTooLarge",
    "Payload",
    "PublishRefused",
    "ReceiptOutbox",
    "ReceiptRecord",
    "Reply",
    "RequestTimeout",
    "Requester",
    "Route",
    "Settings",
    "Store",
    "StoreError",
    "Supervisor",
    "TopicEntry",
    "Transaction",
    "Transport",
    "TransportError",
    "Tx",
    "Will",
    "__version__",
    "availability_will",
    "build_settings",
    "check_level",
    "codec",
    "installation_key",
    "keyed_uuid",
    "mqtt_agent",
    "mqtt_transport",
    "open_store",
    "parse_broker_url",
    "parse_db_url",
    "plain_transport",
    "read_retained",
    "state",
]
