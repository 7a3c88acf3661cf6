"""The limit: a bare MQTT v5 request/response echo on the same client library (gmqtt), QoS 1.

Run as a process by bench/run.py: `python bench/echo.py URL`; replies to every message on
bench/echo with the same payload, on its response topic with its correlation data.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from mesh import Inbound, plain_transport


async def main(url: str) -> None:
    t = plain_transport(url, client_id="bench-echo")

    async def on(msg: Inbound) -> int:
        if msg.response_topic:
            await t.publish(msg.response_topic, msg.payload, correlation_data=msg.correlation_data)
        return 0

    t.on_message = on
    await t.subscribe(["bench/echo"])
    await t.connect()
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await t.disconnect()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
