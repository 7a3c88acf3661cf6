"""A small HTTP endpoint per agent: GET /metrics (Prometheus text) and GET /healthz (JSON)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from mesh.errors import ConfigError

log = logging.getLogger("mesh.http")

Handler = Callable[[], Awaitable[tuple[int, str, bytes]]]


class HttpEndpoint:
    """Serves a fixed route table; every request is read and answered within a timeout."""

    def __init__(self, routes: dict[str, Handler], host: str, port: int) -> None:
        self.routes = routes
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve /metrics on {self.host}:{self.port}: {exc.strerror} "
                "(another agent there? use another --metrics-port)"
            ) from exc
        sock = self._server.sockets[0]
        self.port = int(sock.getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                request = await reader.readline()
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                parts = request.decode("latin-1").split()
                method, path = (parts[0], parts[1].split("?")[0]) if len(parts) >= 2 else ("", "")
                handler = self.routes.get(path)
                if method not in ("GET", "HEAD"):
                    status, ctype, body = 405, "text/plain", b"method not allowed\n"
                elif handler is None:
                    status, ctype, body = (
                        404,
                        "text/plain",
                        b"not found: try /metrics or /healthz\n",
                    )
                else:
                    status, ctype, body = await handler()
                reason = {
                    200: "OK",
                    404: "Not Found",
                    405: "Method Not Allowed",
                    503: "Service Unavailable",
                }.get(status, "OK")
                head = (
                    f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                )
                writer.write(head.encode() + (b"" if method == "HEAD" else body))
                await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        except Exception:
            log.exception("HTTP request failed")
        finally:
            writer.close()
