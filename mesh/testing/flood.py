"""A QoS 0 flood at full speed from a process of its own, as a stuck automation would send it.

`python -m mesh.testing.flood HOST PORT USER PASSWORD TOPIC SECONDS [SIZE]` connects (MQTT
3.1.1, as Home Assistant's client does), writes QoS 0 PUBLISH packets of a SIZE-byte payload
that is no valid JSON request (`{"flood": "xxx..."}`) back to back on a blocking socket for
SECONDS, disconnects cleanly and prints how many it wrote (every one reached the broker: TCP, and
DISCONNECT follows them). Raw packets rather than a client library: a library's own queue would
make "how many were sent" a guess, and the flood slower than a real one.
"""

from __future__ import annotations

import socket
import struct
import sys
import time


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(s: bytes) -> bytes:
    return struct.pack("!H", len(s)) + s


def connect_packet(client_id: str, user: str, password: str) -> bytes:
    body = _string(b"MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 60)
    body += _string(client_id.encode()) + _string(user.encode()) + _string(password.encode())
    return bytes([0x10]) + _varint(len(body)) + body


def publish_packet(topic: str, payload: bytes) -> bytes:
    body = _string(topic.encode()) + payload
    return bytes([0x30]) + _varint(len(body)) + body


def flood_payload(size: int) -> bytes:
    """Valid JSON, but not a request of any schema (no user_id, no fields it knows)."""
    head, tail = b'{"flood": "', b'"}'
    return head + b"x" * max(0, size - len(head) - len(tail)) + tail


def flood(
    host: str, port: int, user: str, password: str, topic: str, seconds: float, size: int = 4096
) -> int:
    """Publish for `seconds`; returns how many PUBLISH packets were written."""
    packet = publish_packet(topic, flood_payload(size))
    burst = packet * 16
    sent = 0
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(connect_packet(f"flood-{time.monotonic_ns()}", user, password))
        connack = sock.recv(4)
        if len(connack) < 4 or connack[0] != 0x20 or connack[3] != 0:
            raise SystemExit(f"broker refused the flood connection: {connack!r}")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            sock.sendall(burst)
            sent += 16
        sock.sendall(b"\xe0\x00")  # DISCONNECT: the broker handles what came before it
        sock.settimeout(10)
        try:
            while sock.recv(4096):  # the broker closes after DISCONNECT
                pass
        except OSError:
            pass
    return sent


def main(argv: list[str]) -> int:
    host, port, user, password, topic, seconds = argv[:6]
    size = int(argv[6]) if len(argv) > 6 else 4096
    print(flood(host, int(port), user, password, topic, float(seconds), size), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
