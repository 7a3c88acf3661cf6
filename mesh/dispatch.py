"""The receiving side of an agent: match, decode, commit, then reply and acknowledge.

1. A QoS 1 message arrives, not acknowledged yet (the transport acknowledges when this returns).
2. It is matched to its contract entry and route and decoded strictly; a bad message is
   dead-lettered, answered with an error when it asked for a reply, and acknowledged.
3. A valid one goes through the group committer (`mesh.inbox`); only after the commit is it
   answered and acknowledged.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from mesh import codec
from mesh.broker.acl import DROPPED
from mesh.contract import Contract
from mesh.dlq import DeadLetterSink
from mesh.errors import DecodeError, PublishRefused, TransportError
from mesh.handler import Route
from mesh.inbox import Delivery, GroupCommitter
from mesh.logs import agent_var, trace_id_var
from mesh.metrics import Metrics
from mesh.rpc import TRACE_PROPERTY, Requester
from mesh.schemas import ErrorInfo, ErrorReply, Reply
from mesh.transport import Inbound, Transport

log = logging.getLogger("mesh.agent")

PeerStatus = Callable[[str, bool], Awaitable[None]]


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
        on_peer_status: PeerStatus,
    ) -> None:
        self.name = name
        self.contract = contract
        self.routes = routes
        self.transport = transport
        self.requester = requester
        self.committer = committer
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.on_peer_status = on_peer_status

    async def on_message(self, msg: Inbound) -> int:
        if msg.topic == self.requester.reply_topic:
            if not self.requester.deliver(msg):
                log.info("late or unknown reply on %s dropped", msg.topic)
            return 0
        if msg.topic == DROPPED:
            with contextlib.suppress(ValueError):
                self.metrics.broker_dropped.set(int(msg.payload))
            return 0
        if "status" not in self.routes and msg.topic.endswith("/status"):
            found = self.contract.match(msg.topic)
            if found is not None and found[0].key == "status":
                await self.on_peer_status(found[1]["agent"], msg.payload == b"online")
                return 0
            if found is None or found[0].key not in self.routes:
                return 0  # e.g. homeassistant/status: caught by the +/status filter, not ours
        trace_id = msg.user_properties.get(TRACE_PROPERTY) or uuid.uuid4().hex
        token = trace_id_var.set(trace_id)
        agent_token = agent_var.set(self.name)
        try:
            return await self.dispatch(msg, trace_id)
        finally:
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

    async def reply(self, msg: Inbound, reply: Reply, request: Any, trace_id: str) -> None:
        if not msg.response_topic:
            return
        transaction = getattr(request, "transaction", None)
        if transaction is not None and reply.transaction is None:
            reply = msgspec.structs.replace(reply, transaction=transaction)
        try:
            await self.transport.publish(
                msg.response_topic,
                codec.encode(reply),
                qos=1,
                correlation_data=msg.correlation_data,
                user_properties={TRACE_PROPERTY: trace_id},
                timeout=10,
            )
            self.metrics.published.labels("reply").inc()
        except PublishRefused as exc:
            log.warning(
                "reply to %s refused by the broker (reason %d): response topics must be "
                "under reply/<username>/",
                msg.response_topic,
                exc.reason_code,
            )
        except TransportError as exc:
            log.warning("reply to %s not delivered: %s", msg.response_topic, exc)

    async def fail(
        self, msg: Inbound, code: str, message: str, trace_id: str, request: Any = None
    ) -> None:
        """A message that retrying cannot fix: dead letter, then an error reply if one was asked."""
        await self.dead_letters.send(msg, code, message, trace_id)
        await self.reply(
            msg, ErrorReply(error=ErrorInfo(code=code, message=message)), request, trace_id
        )
