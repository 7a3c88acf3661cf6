"""The one error tree of the mesh runtime.

MeshError
├── ContractError          topics.toml is malformed, or code breaks it
├── ConfigError            settings, URLs or rules files are invalid
├── DecodeError            a payload is not valid JSON or does not match its schema
├── HandlerError           a handler refuses a message with a code (becomes an error reply)
│   └── NotFound
├── TransportError         the broker connection failed or refused something
│   ├── NotAuthorized      the broker refused the user name or password
│   ├── PublishRefused     a QoS 1 publish was answered with a failure reason code
│   └── PacketTooLarge     a publish would exceed the broker's Maximum Packet Size
├── RequestTimeout         no reply within the contract's timeout
└── StoreError             the database failed
"""

from __future__ import annotations

from typing import Literal


class MeshError(Exception):
    """Base of every error raised by the mesh runtime."""


class ContractError(MeshError):
    """topics.toml is malformed, or code tried to do something it does not declare."""


class ConfigError(MeshError):
    """Settings, URLs or rules files are invalid."""


class DecodeError(MeshError):
    """A payload could not be decoded into its schema; `code` is machine readable."""

    def __init__(self, message: str, code: str = "validation_error") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class HandlerError(MeshError):
    """Raised by a handler to refuse a message with an error code and a message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class NotFound(HandlerError):
    """A handler's refusal with the code `not_found`."""

    def __init__(self, message: str) -> None:
        super().__init__("not_found", message)


class TransportError(MeshError):
    """The broker connection failed or refused something."""


class NotAuthorized(TransportError):
    """The broker refused the CONNECT: bad user name or password, or not authorized."""


class PublishRefused(TransportError):
    """The broker answered a publish with a failure reason code (e.g. 135 Not authorized)."""

    def __init__(self, topic: str, reason_code: int) -> None:
        super().__init__(f"broker refused publish to {topic!r} with reason code {reason_code}")
        self.topic = topic
        self.reason_code = reason_code


class PacketTooLarge(TransportError):
    """Never sent: the broker would close the connection on a packet over its limit."""

    def __init__(self, topic: str, size: int, limit: int) -> None:
        super().__init__(
            f"publish to {topic!r} is {size} bytes, over the broker's maximum packet size {limit}"
        )
        self.topic = topic
        self.size = size
        self.limit = limit


class RequestTimeout(MeshError):
    """No reply to a request within its timeout."""

    def __init__(self, topic: str, timeout: float) -> None:
        super().__init__(f"no reply on request {topic!r} within {timeout:.1f}s")
        self.topic = topic
        self.timeout = timeout


StoreCause = Literal["outage", "exhausted", "conflict"]


class StoreError(MeshError):
    """The database failed; `cause` says why, when known (see mesh.store.errors)."""

    def __init__(self, message: str, cause: StoreCause | None = None) -> None:
        super().__init__(message)
        self.cause = cause
