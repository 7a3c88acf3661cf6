"""A stand-in for Home Assistant's Supervisor services API, over real HTTP on 127.0.0.1.

The add-on's run script asks the Supervisor for the MQTT service (GET /services/mqtt with the
app's SUPERVISOR_TOKEN); the stand-in answers as supervisor/api/services.py does, with the
account the official Mosquitto app publishes (`MOSQUITTO_SERVICE`). A `Supervisor` holds what
to answer and records every request; `serving(sup)` runs the HTTP server for it and sets
`sup.url`. The Supervisor cannot run here, so this is the one mock of the add-on tests.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOKEN = "0123456789abcdef0123456789abcdef"
PASSWORD = "p@ss:w/rd %#?&"

# What the official Mosquitto app publishes (home-assistant/addons
# mosquitto/rootfs/etc/services.d/mosquitto/discovery), as the v1 route returns it.
MOSQUITTO_SERVICE: dict[str, object] = {
    "host": "core-mosquitto",
    "port": 1883,
    "ssl": False,
    "protocol": "3.1.1",
    "username": "addons",
    "password": PASSWORD,
    "addon": "core_mosquitto",
}


@dataclass
class Supervisor:
    """Answers GET /services/mqtt like supervisor/api/services.py get_service_v1 behind the
    security middleware: no token 401, an unknown token 403 (plain text, as aiohttp's
    HTTPUnauthorized and HTTPForbidden), no provider 400 "Service not enabled"."""

    token: str = TOKEN
    service: dict[str, object] | None = field(default_factory=lambda: dict(MOSQUITTO_SERVICE))
    wrong_token_status: int = 403
    fail_status: int | None = None  # answer every request with this status
    fail_message: str = "Unknown error, see Supervisor logs"
    delay: float = 0.0
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    url: str = ""


def handler_for(sup: Supervisor) -> type[BaseHTTPRequestHandler]:
    """The request handler class answering for `sup`."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            auth = self.headers.get("Authorization")
            sup.requests.append((self.path, auth))
            time.sleep(sup.delay)
            if auth is None:
                self._send(401, b"401: Unauthorized", "text/plain")
            elif auth != f"Bearer {sup.token}":
                status = sup.wrong_token_status
                reason = "Unauthorized" if status == 401 else "Forbidden"
                self._send(status, f"{status}: {reason}".encode(), "text/plain")
            elif sup.fail_status is not None:
                self._error(sup.fail_status, sup.fail_message)
            elif self.path != "/services/mqtt":
                self._error(404, "Service does not exist")
            elif sup.service is None:
                self._error(400, "Service not enabled")
            else:
                body = json.dumps({"result": "ok", "data": sup.service}).encode()
                self._send(200, body, "application/json")

        def _error(self, status: int, message: str) -> None:
            body = json.dumps({"result": "error", "message": message}).encode()
            self._send(status, body, "application/json")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout tests)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@contextlib.contextmanager
def serving(sup: Supervisor) -> Iterator[Supervisor]:
    """Serve `sup` on a free port of 127.0.0.1 (its `url`) until the block ends."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(sup))
    server.daemon_threads = True
    server.block_on_close = False
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    sup.url = f"http://127.0.0.1:{server.server_port}"
    try:
        yield sup
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
