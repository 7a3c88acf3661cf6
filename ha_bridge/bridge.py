"""The Home Assistant bridge: mesh state in, discovery configs and device states out.

- Character sheets (stats/character/<user>) and timelines (lifeops/timeline/<user>) are stored
  per user; every change recomputes that user's entities and device state, and only what changed
  is staged (retained, through the runtime's state table, published after the commit).
- At startup the bridge reads back the broker's retained discovery configs and the mesh's current
  state, then clears the configs it owns that no longer match a user, stat or item.
- On Home Assistant's birth message it waits a short random delay, then republishes its
  availability, every discovery config and every state.
- Stats' level-ups and achievements are republished per user with an `event_type`, for the
  user's Home Assistant event entities (once per event id).
- Users it knows of without a timeline (or sheet) get one asked from LifeOps (or Stats), so a
  new user's buttons appear before their first completion.
- Entity ids come from the folded user id (`Alice` and `alice` would share them): the first
  spelling the bridge stores holds them (lifeops_contract.user_registry); another spelling's
  state is refused (dead letter naming both) and it gets no entities.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random

from ha_bridge import repository
from ha_bridge.entities import (
    Entity,
    EntityBuilder,
    achievement_event,
    encode_config,
    is_own_node,
    levelup_event,
)
from ha_bridge.readback import read_back
from ha_bridge.repository import EXISTING_USERS, Desired
from lifeops_contract import user_registry
from lifeops_contract.ids import check_user_id
from lifeops_contract.schemas import (
    AchievementUnlocked,
    CharacterGetRequest,
    CharacterReply,
    CharacterSheet,
    LevelUp,
    TimelineDay,
    TimelineGetRequest,
    TimelineReply,
)
from mesh import Agent, Context, Contract, DecodeError, HandlerError, MeshError, Tx, codec, state

log = logging.getLogger("ha_bridge")

BIRTH_DELAY_S = (0.5, 2.5)  # random, so many bridges do not answer HA's birth at once


class Bridge:
    def __init__(
        self, users: tuple[str, ...], contract: Contract, *, device_discovery: bool = False
    ) -> None:
        self.users = users  # devices created at startup, before the mesh knows them
        self.contract = contract
        self.device_discovery = device_discovery  # one config per device instead of per entity
        self.builder = EntityBuilder(contract, list(contract.agents))
        self.agent: Agent | None = None
        self._republish: asyncio.Task[None] | None = None
        self._fill_wake = asyncio.Event()
        self._fill_task: asyncio.Task[None] | None = None
        self._asked: set[tuple[str, str]] = set()  # (user, key) answered since the peer came up
        self.registry = user_registry.UserRegistry()  # which spelling holds a user's entity ids

    # -- lifecycle ------------------------------------------------------------------------------

    async def open(self, agent: Agent) -> None:
        """Before the first connect: availability changes may arrive before `start`."""
        self.agent = agent
        for refused, holder in await user_registry.install(agent.store, EXISTING_USERS):
            log.warning(
                "users %r and %r would share entity ids: %r gets none from now on",
                refused, holder, refused,
            )  # fmt: skip

    async def start(self, agent: Agent) -> None:
        self.agent = agent
        await self.reconcile()
        self._fill_task = asyncio.create_task(self._fill_loop(), name="ha-fill")
        self._fill_wake.set()

    async def stop(self, agent: Agent) -> None:
        for task in (self._fill_task, self._republish):
            if task is not None:
                task.cancel()

    async def peer_status(self, agent: str, online: bool) -> None:
        """An agent this bridge depends on came or went (its last instance): Home Assistant's
        availability topic for it follows, retained, through the state table."""
        me = self._agent()
        if agent in me.app.depends_on:
            topic = self.contract.topic("ha_availability", peer=agent)
            payload = b"online" if online else b"offline"
            async with me.store.transaction() as tx:
                await state.put(
                    tx, topic=topic, topic_key="ha_availability", payload=payload, trace_id=None
                )
            me.states.changed()
        if online and agent in ("lifeops", "stats"):
            self._asked = {a for a in self._asked if a[1] != agent}
            self._fill_wake.set()

    # -- routes ---------------------------------------------------------------------------------

    async def character_state(self, ctx: Context, sheet: CharacterSheet) -> None:
        user_id = self._user(ctx, sheet.user_id)
        await self.registry.check(ctx.tx, user_id, ctx.now)
        sheet.user_id = user_id
        await repository.save_sheet(ctx.tx, sheet)
        await self.sync_user(ctx.tx, user_id, ctx.trace_id)
        self._fill_wake.set()

    async def timeline_state(self, ctx: Context, day: TimelineDay) -> None:
        user_id = self._user(ctx, day.user_id)
        await self.registry.check(ctx.tx, user_id, ctx.now)
        day.user_id = user_id
        await repository.save_timeline(ctx.tx, day)
        await self.sync_user(ctx.tx, user_id, ctx.trace_id)
        self._fill_wake.set()

    async def levelup(self, ctx: Context, event: LevelUp) -> None:
        """Stats' level-up, republished on the user's topic for their HA event entity (the
        character's and the stats' apart)."""
        user_id = check_user_id(event.user_id)
        key = "ha_levelup" if event.stat is None else "ha_stat_levelup"
        await ctx.emit(key, levelup_event(event), user_id=user_id)

    async def achievement(self, ctx: Context, event: AchievementUnlocked) -> None:
        """Stats' achievement, republished on the user's topic for their HA event entity."""
        user_id = check_user_id(event.user_id)
        await ctx.emit("ha_achievement", achievement_event(event), user_id=user_id)

    async def ha_status(self, ctx: Context, status: str) -> None:
        if status == "online":
            log.info("Home Assistant is online: republishing discovery and states")
            self.schedule_republish()

    @staticmethod
    def _user(ctx: Context, in_payload: str) -> str:
        user_id = check_user_id(ctx.params["user_id"])
        if in_payload and in_payload != user_id:
            raise HandlerError(
                "user_mismatch", f"payload user_id {in_payload[:64]!r} on the topic of {user_id!r}"
            )
        return user_id

    # -- entities -------------------------------------------------------------------------------

    async def sync_user(self, tx: Tx, user_id: str, trace_id: str | None) -> int:
        if await self.registry.admit(tx, [user_id], dt.datetime.now(dt.UTC)):
            # Another spelling holds this user's entity ids: none of its own (any cleared).
            return await repository.sync_owner(tx, f"user:{user_id}", [], trace_id)
        inputs = await repository.load(tx, user_id)
        entities = self.builder.user_entities(user_id, inputs.sheet, inputs.timeline)
        desired = self._configs(entities)
        if entities:
            state = self.builder.user_state(user_id, inputs.sheet, inputs.timeline)
            desired.append(
                Desired(self.builder.state_topic(user_id), "ha_user_state", codec.encode(state))
            )
        return await repository.sync_owner(tx, f"user:{user_id}", desired, trace_id)

    async def sync_mesh(self, tx: Tx) -> int:
        desired = self._configs(self.builder.mesh_entities())
        return await repository.sync_owner(tx, "mesh", desired, None)

    def _configs(self, entities: list[Entity]) -> list[Desired]:
        """The discovery configs of one device's entities, in the chosen form (the other
        form's topics are then no longer desired, and cleared)."""
        if not entities:
            return []
        if self.device_discovery:
            one = self.builder.device_config(entities)
            return [Desired(one.topic, "ha_device_discovery", encode_config(one))]
        return [Desired(e.topic, "ha_discovery", encode_config(e)) for e in entities]

    async def reconcile(self) -> None:
        """Read back the broker, bring every user up to date, clear what is no longer ours."""
        agent = self._agent()
        discovery = self.contract.subscription("ha_discovery")
        devices = self.contract.subscription("ha_device_discovery")
        inputs = [
            self.contract.subscription("character_state"),
            self.contract.subscription("timeline_state"),
        ]
        connection = agent.transport.sibling(f"{agent.settings.client_id}-readback")
        retained = await read_back(connection, self.contract, [discovery, devices, *inputs])
        on_broker: set[str] = set()
        async with agent.store.transaction() as tx:
            for msg in retained:
                found = self.contract.match(msg.topic)
                if found is None:
                    continue
                entry, params = found
                try:
                    if entry.key in DISCOVERY_KEYS:
                        if is_own_node(params["node_id"]):
                            on_broker.add(msg.topic)
                    elif entry.key == "character_state":
                        user_id = check_user_id(params["user_id"])
                        await self.registry.check(tx, user_id, dt.datetime.now(dt.UTC))
                        sheet = codec.decode(msg.payload, CharacterSheet)
                        sheet.user_id = user_id
                        await repository.save_sheet(tx, sheet)
                    elif entry.key == "timeline_state":
                        user_id = check_user_id(params["user_id"])
                        await self.registry.check(tx, user_id, dt.datetime.now(dt.UTC))
                        day = codec.decode(msg.payload, TimelineDay)
                        day.user_id = user_id
                        await repository.save_timeline(tx, day)
                except (DecodeError, HandlerError) as exc:
                    log.warning("retained %s ignored: %s", msg.topic, exc)
            await self._add_configured(tx)
            staged = await self.sync_mesh(tx)
            for inputs_of in await repository.load_all(tx):
                staged += await self.sync_user(tx, inputs_of.user_id, None)
            owned = await repository.owned_topics(tx)
            stale = sorted(on_broker - owned)
            for topic in stale:
                await repository.clear(tx, topic, None)
            # Ours but gone from the broker (it lost retained messages): publish again.
            lost = [t for t in owned if is_config(t, self.contract) and t not in on_broker]
            await state.forget_published(tx, lost)
        agent.states.changed()
        log.info(
            "discovery reconciled: %d retained configs found, %d stale cleared, %d restored, "
            "%d staged",
            len(on_broker),
            len(stale),
            len(lost),
            staged,
        )

    async def _add_configured(self, tx: Tx) -> None:
        """The users of LIFEOPS_HA_USERS; one another spelling holds is left out, said once."""
        for configured in self.users:
            try:
                user_id = check_user_id(configured)
                await self.registry.check(tx, user_id, dt.datetime.now(dt.UTC))
            except HandlerError as exc:
                log.error("LIFEOPS_HA_USERS: %s", exc)
                continue
            await repository.add_user(tx, user_id)

    # -- Home Assistant's birth -----------------------------------------------------------------

    def schedule_republish(self) -> None:
        if self._republish is not None and not self._republish.done():
            return  # one republish answers a burst of births
        self._republish = asyncio.create_task(self._republish_later(), name="ha-republish")

    async def _republish_later(self) -> None:
        agent = self._agent()
        await asyncio.sleep(random.uniform(*BIRTH_DELAY_S))
        try:
            await agent.transport.publish(
                agent.status_topic, b"online", qos=1, retain=True, timeout=10
            )
            await agent.states.republish_all()
        except Exception as exc:
            log.warning("republish after Home Assistant's birth failed: %s", exc)

    # -- users the mesh has not told us everything about ----------------------------------------

    async def _fill_loop(self) -> None:
        while True:
            await self._fill_wake.wait()
            self._fill_wake.clear()
            try:
                await self._fill()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("could not fill in users: %s", exc)
            await asyncio.sleep(1.0)

    async def _fill(self) -> None:
        agent = self._agent()
        async with agent.store.read() as tx:
            users = await repository.load_all(tx)
        for user in users:
            if user.timeline is None and agent.peers.get("lifeops"):
                await self._ask(user.user_id, "timeline_get")
            if user.sheet is None and agent.peers.get("stats"):
                await self._ask(user.user_id, "character_get")

    async def _ask(self, user_id: str, key: str) -> None:
        agent = self._agent()
        peer = "lifeops" if key == "timeline_get" else "stats"
        if (user_id, peer) in self._asked:
            return
        try:
            request = (
                TimelineGetRequest(user_id=user_id)
                if key == "timeline_get"
                else CharacterGetRequest(user_id=user_id)
            )
            reply = await agent.requester.request(key, request)
        except MeshError as exc:
            log.info("%s for %s not answered: %s", key, user_id, exc)
            return
        self._asked.add((user_id, peer))
        async with agent.store.transaction() as tx:
            if isinstance(reply, TimelineReply) and reply.timeline is not None:
                await repository.save_timeline(tx, reply.timeline, only_if_missing=True)
            elif isinstance(reply, CharacterReply) and reply.character is not None:
                sheet = reply.character
                sheet.user_id = user_id
                await repository.save_sheet(tx, sheet, only_if_missing=True)
            else:
                return
            await self.sync_user(tx, user_id, None)
        agent.states.changed()

    def _agent(self) -> Agent:
        if self.agent is None:
            raise RuntimeError("the bridge has not started")
        return self.agent


DISCOVERY_KEYS = ("ha_discovery", "ha_device_discovery")


def is_config(topic: str, contract: Contract) -> bool:
    found = contract.match(topic)
    return found is not None and found[0].key in DISCOVERY_KEYS
