"""The receiving side of an agent: match, decode, commit, then reply and acknowledge.

1. A QoS 1 message arrives, not acknowledged yet (the transport acknowledges when this returns).
2. It is matched to its contract entry and route and decoded strictly; a bad message is
   dead-lettered, answered with an error when it asked for a reply, and acknowledged.
3. A valid one goes through the group committer (`mesh.inbox`); only after the commit is it
   answered and acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from mesh import codec
from mesh.broker.acl import DROPPED
from mesh.contract import Contract, TopicEntry
from mesh.dlq import DeadLetterSink
from mesh.errors import DecodeError, PacketTooLarge, PublishRefused, TransportError
from mesh.handler import Route
from mesh.inbox import Delivery, GroupCommitter
from mesh.logs import agent_var, trace_id_var
from mesh.metrics import Metrics
from mesh.rpc import EXPIRES_PROPERTY, TRACE_PROPERTY, Requester
from mesh.schemas import ErrorInfo, ErrorReply, Reply
from mesh.topics import covers, shared
from mesh.transport import Inbound, Transport

log = logging.getLogger("mesh.agent")

AgentStatus = Callable[[str, bool], Awaitable[None]]  # agent, online
InstanceStatus = Callable[[str, str, bool], Awaitable[None]]  # agent, instance, online
Refused = Callable[[str, str, Exception], str]  # key, topic, why -> reason
COMMANDS = ("request", "event")  # kinds whose messages change state or ask for an answer


CLOCK_SKEW_S = 60.0  # clocks of requester and agent may differ this much


def _expired(msg: Inbound) -> bool:
    """A request whose requester gave up (its `expires_at`, beyond any clock skew)."""
    text = msg.user_properties.get(EXPIRES_PROPERTY)
    if text is None:
        return False
    try:
        return time.time() > float(text) + CLOCK_SKEW_S
    except ValueError:
        return False


class Dispatcher:
    """Routes every inbound message of one agent (set as the transport's `on_message`)."""

    def __init__(
        self,
        *,
        name: str,
        contract: Contract,
        routes: dict[str, Route],
        transport: Transport,
        requester: Requester,
        committer: GroupCommitter,
        dead_letters: DeadLetterSink,
        metrics: Metrics,
        on_agent_status: AgentStatus,
        on_instance_status: InstanceStatus,
        on_refused: Refused,
    ) -> None:
        self.name = name
        self.contract = contract
        self.routes = routes
        self.transport = transport
        self.requester = requester
        self.committer = committer
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.broker_dropped: int | None = None  # $SYS/broker/publish/messages/dropped
        self.on_agent_status = on_agent_status
        self.on_instance_status = on_instance_status
        self.on_refused = on_refused
        self.inflight = 0  # messages being handled right now
        # Set when the agent stops: QoS 0 messages that still arrive are dropped unhandled
        # (`on_dropped`, reason `stopping`), so a flood cannot hold the drain open.
        self.closing = False
        self.on_dropped: Callable[[str, str], None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    def filters(self, share_group: str | None) -> list[str]:
        """What to subscribe to for what this dispatcher handles: its routes (events and
        requests through the shared group, if any), its replies, every agent's availability
        (and every instance's, when the contract has instance topics), the broker's count of
        dropped messages."""
        filters = []
        for key in self.routes:
            entry = self.contract.entry(key)
            f = self.contract.subscription(key)  # {agent} as +: every agent's status
            if entry.kind in ("event", "request"):
                f = shared(share_group, f)
            filters.append(f)
        filters.append(self.requester.reply_filter)
        if "status" not in self.routes:
            filters.append(self.contract.subscription("status"))  # every agent's availability
        if "instance_status" in self.contract.topics:
            filters.append(self.contract.subscription("instance_status"))  # and instance's
        filters.append(DROPPED)
        # Overlapping filters would bring a message once per filter (homeassistant/status is also
        # +/status): keep only the widest.
        return [f for f in filters if not any(g != f and covers(g, f) for g in filters)]

    async def drained(self, timeout: float) -> bool:
        """Wait until no message is being handled (bounded); False when some still are."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
            return True
        except TimeoutError:
            return False

    async def on_message(self, msg: Inbound) -> int:
        if msg.topic == self.requester.reply_topic:
            if not self.requester.deliver(msg):
                log.info("late or unknown reply on %s dropped", msg.topic)
            return 0
        if msg.topic == DROPPED:
            with contextlib.suppress(ValueError):
                self.broker_dropped = int(msg.payload)
                self.metrics.broker_dropped.set(self.broker_dropped)
            return 0
        if "/status" in msg.topic and "status" not in self.routes:
            found = self.contract.match(msg.topic)
            key = found[0].key if found else None
            if found is not None and key == "status":
                await self.on_agent_status(found[1]["agent"], msg.payload == b"online")
                return 0
            if found is not None and key == "instance_status":
                agent, instance = found[1]["agent"], found[1]["instance"]
                await self.on_instance_status(agent, instance, msg.payload == b"online")
                return 0
            if found is None or key not in self.routes:
                return 0  # e.g. homeassistant/status: caught by the +/status filter, not ours
        if self.closing and msg.qos == 0:
            if self.on_dropped is not None:
                self.on_dropped(msg.topic, "stopping")
            return 0
        # A random trace id (no uuid4: os.urandom per message was 4% of a flood's cost)
        trace_id = msg.user_properties.get(TRACE_PROPERTY) or f"{random.getrandbits(128):032x}"
        token = trace_id_var.set(trace_id)
        agent_token = agent_var.set(self.name)
        self.inflight += 1
        self._idle.clear()
        try:
            return await self.dispatch(msg, trace_id)
        finally:
            self.inflight -= 1
            if self.inflight == 0:
                self._idle.set()
            agent_var.reset(agent_token)
            trace_id_var.reset(token)

    async def dispatch(self, msg: Inbound, trace_id: str) -> int:
        found = self.contract.match(msg.topic)
        if found is None:
            await self.fail(
                msg,
                "undeclared_topic",
                f"{self.name} has no route for topic {msg.topic!r}",
                trace_id,
            )
            return 0
        entry, params = found
        route = self.routes.get(entry.key)
        if route is None:
            # A declared topic this agent does not handle, caught by a wider filter of its own
            # (stats/character/+ also matches the request topic stats/character/get): not ours
            # to answer or dead-letter; its own subscribers handle it.
            log.debug("%s: %s is %s, not routed here", self.name, msg.topic, entry.key)
            return 0
        self.metrics.received.labels(entry.key).inc()
        if await self._refused_unheard(msg, entry, trace_id):
            return 0
        try:
            payload = codec.decode(msg.payload, entry.schema_type, entry.format)
        except DecodeError as exc:
            await self.fail(msg, exc.code, f"{entry.topic}: {exc.message}", trace_id)
            return 0
        delivery = Delivery(
            msg=msg, entry=entry, params=params, route=route, payload=payload, trace_id=trace_id
        )
        outcome = await self.committer.process(delivery)
        log.info(
            "%s %s -> %s",
            entry.key,
            msg.topic,
            "error " + outcome.error.code
            if outcome.error
            else ("duplicate" if outcome.duplicate else "ok"),
        )
        if outcome.error is not None:
            await self.fail(msg, outcome.error.code, outcome.error.message, trace_id, payload)
        elif outcome.reply is not None:
            reply = outcome.reply
            if route.after_commit is not None:
                try:
                    reply = await route.after_commit(payload, reply)
                except Exception:
                    log.exception("after-commit hook of %s failed; replying without it", entry.key)
            await self.reply(msg, reply, payload, trace_id)
        return 0

    async def _refused_unheard(self, msg: Inbound, entry: TopicEntry, trace_id: str) -> bool:
        """Dead-letter, without acting on it, a message that must not be executed: one whose
        reply could go nowhere, one whose requester gave up, a retained command."""
        if msg.response_topic is not None and not self.contract.is_reply_topic(msg.response_topic):
            # Its answer would go nowhere: say so (dead letter) rather than act on it unheard.
            await self.dead_letters.send(
                msg,
                "invalid_response_topic",
                f"response topic {msg.response_topic[:128]!r}: use reply/<your username>/<id>",
                trace_id,
            )
            return True
        if entry.kind in COMMANDS and _expired(msg):
            await self.dead_letters.send(
                msg, "expired", f"{entry.topic}: the requester stopped waiting", trace_id
            )
            return True
        if msg.retain and entry.kind in COMMANDS:
            # A retained request or event would replay on every new session: never executed.
            await self.dead_letters.send(
                msg,
                "retained_command",
                f"{entry.topic} is a {entry.kind}: a retained one is not executed (clear it with"
                f" mosquitto_pub -r -n -t '{msg.topic}')",
                trace_id,
            )
            return True
        return False

    async def reply(self, msg: Inbound, reply: Reply, request: Any, trace_id: str) -> None:
        if not msg.response_topic:
            return
        transaction = getattr(request, "transaction", None)
        if transaction is not None and reply.transaction is None:
            reply = msgspec.structs.replace(reply, transaction=transaction)
        body = codec.encode(reply)
        for attempt in ("reply", "error reply"):
            try:
                await self.transport.publish(
                    msg.response_topic,
                    body,
                    qos=1,
                    correlation_data=msg.correlation_data,
                    user_properties={TRACE_PROPERTY: trace_id},
                    timeout=10,
                )
                self.metrics.published.labels("reply").inc()
                return
            except PacketTooLarge as exc:
                self.on_refused("reply", msg.response_topic, exc)
                log.error("%s to %s does not fit: %s", attempt, msg.response_topic, exc)
                error = ErrorInfo(code="reply_too_large", message=f"the reply is {exc.size} bytes")
                body = codec.encode(ErrorReply(error=error, transaction=reply.transaction))
            except PublishRefused as exc:
                self.on_refused("reply", msg.response_topic, exc)
                log.warning(
                    "reply to %s refused by the broker (reason %d): response topics must be "
                    "under reply/<username>/",
                    msg.response_topic,
                    exc.reason_code,
                )
                return
            except TransportError as exc:
                log.warning("reply to %s not delivered: %s", msg.response_topic, exc)
                return

    async def fail(
        self, msg: Inbound, code: str, message: str, trace_id: str, request: Any = None
    ) -> None:
        """A message that retrying cannot fix: dead letter, then an error reply if one was asked."""
        await self.dead_letters.send(msg, code, message, trace_id)
        await self.reply(
            msg, ErrorReply(error=ErrorInfo(code=code, message=message)), request, trace_id
        )
