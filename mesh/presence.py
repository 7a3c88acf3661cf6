"""One instance's presence on the mesh: its availability topic, Last Will, and the refusal to
run twice.

Every instance of an agent (`--instance NAME`, default 0) announces itself on
`<agent>/status/<instance>` through a small connection of its own whose Last Will is `offline`
on that topic, so the broker says precisely when this instance died, whatever else runs; the
durable session's Last Will stays on `<agent>/status` (the agent as a whole). An agent is
available while any of its instances is.

Before it connects with its durable client id, an instance reads the retained status and health
of its own instance topic: a fresh health report of an instance that says `online` means another
process runs this very instance (same client id). Connecting would take its session over, and
the two would throw each other off the broker in turn; so it refuses, in one line.

`Roster` is who is online as this agent sees it: every agent's availability (by its instances
when the contract has instance topics), and this agent's own `<agent>/status`: `online` on
every connect, restated at once when a dead sibling instance's Last Will says `offline` for the
whole agent, `offline` only when its last instance stops cleanly.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from mesh import codec
from mesh.contract import Contract
from mesh.errors import ConfigError, DecodeError, TransportError
from mesh.metrics import Metrics
from mesh.schemas import HealthReport
from mesh.transport import Inbound, Transport, Will

log = logging.getLogger("mesh.presence")

FRESH_S = 35.0  # a health report younger than this (reports come every 15 s) means alive


class InstanceRunning(ConfigError):
    """Another live process runs this agent instance (same client id)."""


class Presence:
    def __init__(
        self, contract: Contract, agent: str, instance: str, client_id: str, main: Transport
    ) -> None:
        self.contract = contract
        self.agent = agent
        self.instance = instance
        self.client_id = client_id
        self.status_topic = contract.topic("instance_status", agent=agent, instance=instance)
        self.health_topic = contract.topic("instance_health", agent=agent, instance=instance)
        self._main = main
        self.connection = main.sibling(
            f"{client_id}-presence",
            will=Will(topic=self.status_topic, payload=b"offline", retain=True),
        )
        self._online = False
        self._kicks: list[float] = []  # when the durable session was closed lately

    async def ensure_alone(self, *, timeout: float = 5.0, fresh_s: float = FRESH_S) -> None:
        """Raise InstanceRunning when another live process runs this instance."""
        probe = self._main.sibling(f"{self.client_id}-probe-{uuid.uuid4().hex[:6]}")
        seen: dict[str, Inbound] = {}

        async def on(msg: Inbound) -> int:
            seen[msg.topic] = msg
            return 0

        probe.on_message = on
        await probe.subscribe([self.status_topic, self.health_topic])
        try:
            await probe.connect(timeout=timeout)
            await asyncio.sleep(0.3)  # the retained messages follow the SUBACK
        finally:
            await probe.disconnect()
        status = seen.get(self.status_topic)
        if status is None or status.payload != b"online":
            return
        age = _age_of(seen.get(self.health_topic))
        if age is not None and age < fresh_s:
            raise InstanceRunning(
                f"{self.agent} instance {self.instance!r} is already running (client id "
                f"{self.client_id}, healthy {age:.0f} s ago): stop it first, or start this one "
                "with another --instance"
            )
        log.info("instance %s was left online (no fresh health): taking its place", self.instance)

    async def thrown_off(self, window_s: float = 30.0) -> bool:
        """Called when the durable session was closed: whether another process took it over.
        Mosquitto 2.0 closes a session taken over without saying so (no DISCONNECT 0x8E). The
        broker still answering this presence connection while the durable one was closed twice
        within `window_s` means something else connects with our client id: two processes
        throwing each other off."""
        await asyncio.sleep(0.5)
        if not self.connection.connected:
            return False  # the broker itself went away: reconnecting is right
        now = asyncio.get_running_loop().time()
        self._kicks = [t for t in self._kicks if now - t < window_s] + [now]
        return len(self._kicks) >= 2

    async def connect(self, timeout: float) -> None:
        self.connection.on_connect = self._on_connect
        await self.connection.connect(timeout=timeout)

    async def _on_connect(self, session_present: bool) -> None:
        if self._online:  # a reconnect: the broker may have lost the retained status
            await self._say(b"online")

    async def announce(self) -> None:
        """Say `online` (once the instance serves)."""
        self._online = True
        await self._say(b"online")

    async def close(self) -> None:
        """Say `offline`, clear this instance's health (it no longer runs), and leave (a clean
        stop: no Last Will)."""
        self._online = False
        if self.connection.connected:
            await self._say(b"offline")
            try:
                await self.connection.publish(self.health_topic, b"", qos=1, retain=True, timeout=5)
            except TransportError as exc:
                log.warning("could not clear %s: %s", self.health_topic, exc)
        await self.connection.disconnect()

    async def _say(self, status: bytes) -> None:
        try:
            await self.connection.publish(self.status_topic, status, qos=1, retain=True, timeout=5)
        except TransportError as exc:
            log.warning("could not publish %s on %s: %s", status.decode(), self.status_topic, exc)


PeerStatus = Callable[[str, bool], Awaitable[None]]  # agent, online
Spawn = Callable[[Awaitable[Any]], None]


class Roster:
    """The availability of every agent as this one sees it, and its own `<agent>/status`."""

    def __init__(
        self,
        *,
        contract: Contract,
        agent: str,
        instance: str,
        transport: Transport,
        metrics: Metrics,
        depends_on: tuple[str, ...],
        on_peer_status: PeerStatus | None,
        spawn: Spawn,
    ) -> None:
        self.agent = agent
        self.instance = instance
        self.status_topic = contract.topic("status", agent=agent)
        self.by_instance = "instance_status" in contract.topics
        self.peers: dict[str, bool] = {}
        self.instances: dict[str, dict[str, bool]] = {}  # agent -> instance -> online
        # This instance serves: a Last Will saying its agent is `offline` is answered with
        # `online` (set once started; cleared first thing at stop, so its own `offline` stays).
        self.serving = False
        self._transport = transport
        self._metrics = metrics
        self._depends_on = depends_on
        self._on_peer_status = on_peer_status
        self._spawn = spawn

    async def say(self, status: bytes, *, timeout: float = 5, doing: str = "publish") -> None:
        """Publish this agent's availability (retained); a failure is logged, not raised."""
        try:
            await self._transport.publish(
                self.status_topic, status, qos=1, retain=True, timeout=timeout
            )
        except TransportError as exc:
            log.warning("could not %s %s: %s", doing, status.decode(), exc)

    def others_online(self) -> bool:
        """Whether another instance of this agent is online (then it stays `online`)."""
        mine = self.instances.get(self.agent, {})
        return any(up for inst, up in mine.items() if inst != self.instance)

    async def instance_status(self, agent: str, instance: str, online: bool) -> None:
        """An instance came or went: an agent is available while any of its instances is."""
        self.instances.setdefault(agent, {})[instance] = online
        await self._peer_status(agent, any(self.instances[agent].values()))

    async def agent_status(self, agent: str, online: bool) -> None:
        """`<agent>/status`: when one of our instances dies, its Last Will says `offline` for
        the whole agent; the instances still running say `online` again at once."""
        if agent == self.agent and not online and self.serving and self._transport.connected:
            self._spawn(self.say(b"online", doing="restate"))
        if not self.by_instance:
            await self._peer_status(agent, online)

    async def _peer_status(self, agent: str, online: bool) -> None:
        was = self.peers.get(agent)
        self.peers[agent] = online
        if agent in self._depends_on:
            self._metrics.peer_up.labels(agent).set(1 if online else 0)
        if was != online and agent != self.agent:
            log.info("agent %s is %s", agent, "online" if online else "offline")
            if self._on_peer_status is not None:
                await self._on_peer_status(agent, online)


def _age_of(msg: Inbound | None) -> float | None:
    """Seconds since a retained health report was made, None when there is none."""
    if msg is None:
        return None
    try:
        report: HealthReport = codec.decode(msg.payload, HealthReport)
    except DecodeError:
        return None
    if report.checked_at is None:
        return None
    return (dt.datetime.now(dt.UTC) - report.checked_at).total_seconds()
