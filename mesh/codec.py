"""Strict JSON/text codecs over msgspec, with errors that name the offending field."""

from __future__ import annotations

import base64
from functools import lru_cache
from typing import Any, Literal

import msgspec

from mesh.errors import DecodeError

PayloadFormat = Literal["json", "text"]

_encoder = msgspec.json.Encoder()


def encode(value: Any) -> bytes:
    """Encode a Struct (or any msgspec-supported value) as compact JSON."""
    return _encoder.encode(value)


@lru_cache(maxsize=256)
def _decoder(schema: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(schema)


def decode(payload: bytes, schema: Any, fmt: PayloadFormat = "json") -> Any:
    """Decode `payload` into `schema`; DecodeError carries a machine code and a clear message."""
    if fmt == "text":
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError(f"payload is not UTF-8: {exc}", "invalid_encoding") from exc
        try:
            return msgspec.convert(text, schema)
        except msgspec.ValidationError as exc:
            raise DecodeError(f"invalid payload {text[:80]!r}: {exc}") from exc
    try:
        return _decoder(schema).decode(payload)
    except msgspec.ValidationError as exc:
        raise DecodeError(str(exc), "validation_error") from exc
    except msgspec.DecodeError as exc:
        raise DecodeError(f"payload is not valid JSON: {exc}", "invalid_json") from exc


def encode_value(value: Any, fmt: PayloadFormat = "json") -> bytes:
    if fmt == "text":
        return str(value).encode("utf-8")
    return encode(value)


def printable(payload: bytes) -> tuple[str, Literal["utf-8", "base64"]]:
    """Payload as text for a dead-letter record: UTF-8 when it is, base64 otherwise."""
    try:
        return payload.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(payload).decode("ascii"), "base64"
