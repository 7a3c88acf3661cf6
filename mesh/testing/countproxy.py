"""A TCP proxy between one MQTT client and the broker that counts the PUBLISH packets the broker
sends the client on one topic: what the broker delivered, counted outside the client.

It runs its own event loop in a thread; `with CountingProxy(broker_port, topic) as proxy:`
connect the client to `proxy.port`, read `proxy.delivered` at any time.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _PublishCounter:
    """Parses the broker-to-client byte stream into MQTT packets and counts the PUBLISH ones
    on `topic` (no topic aliases: the mesh's clients do not allow them)."""

    def __init__(self, topic: bytes) -> None:
        self.topic = topic
        self.count = 0
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            size, shift, n = 0, 0, pos + 1
            while n < end and n - pos <= 4:
                byte = buf[n]
                size |= (byte & 0x7F) << shift
                shift += 7
                n += 1
                if not byte & 0x80:
                    break
            else:
                break  # the length is not complete yet
            if n + size > end:
                break
            if buf[pos] >> 4 == 3:  # PUBLISH
                tlen = (buf[n] << 8) | buf[n + 1]
                if buf[n + 2 : n + 2 + tlen] == self.topic:
                    self.count += 1
            pos = n + size
        del buf[:pos]


class CountingProxy:
    def __init__(self, broker_port: int, topic: str, *, host: str = "127.0.0.1") -> None:
        self.broker = (host, broker_port)
        self.port = _free_port()
        self._topic = topic.encode()
        self._counters: list[_PublishCounter] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    @property
    def delivered(self) -> int:
        """PUBLISH packets on the topic the broker sent through this proxy so far."""
        return sum(c.count for c in self._counters)

    def __enter__(self) -> CountingProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port)

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.broker)
        except OSError:
            writer.close()
            return
        counter = _PublishCounter(self._topic)
        self._counters.append(counter)
        await asyncio.gather(
            self._pipe(reader, up_writer, None),
            self._pipe(up_reader, writer, counter),
            return_exceptions=True,
        )

    @staticmethod
    async def _pipe(
        src: asyncio.StreamReader, dst: asyncio.StreamWriter, counter: _PublishCounter | None
    ) -> None:
        try:
            while data := await src.read(262_144):
                if counter is not None:
                    counter.feed(data)
                dst.write(data)
                await dst.drain()
        finally:
            with contextlib.suppress(Exception):
                dst.close()
