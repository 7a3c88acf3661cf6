"""One source for dedup keys: every route of every agent claims the key topics.toml's `dedup`
expression builds, and those keys are byte for byte the ones the hand-written key functions made
before (existing databases hold them in `mesh_inbox`, and an Oura day's key is also the
`source_ref` and the seed of the activity id its XP is stored under)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lifeops_contract import contract
from lifeops_contract.schemas import (
    AchievementUnlocked,
    ActivityCompleted,
    ActivityLogRequest,
    LevelUp,
    OuraScores,
    OuraSynced,
)
from lifeops_mesh import registry
from mesh import KEYLESS, HandlerError, Keyless, Route, build_settings, codec
from stats_agent import game

# -- the key functions as they were before the contract built the keys (verbatim) ------------


def activity_identity(req: ActivityLogRequest) -> str | None:
    """The dedup key: activity_id when given, else (source, source_ref); None when neither."""
    if req.activity_id:
        return f"activity:{req.activity_id}"
    if req.source_ref:
        return f"activity:{req.source}:{req.source_ref}"
    return None


def oura_day_ref(user_id: str, day: dt.date) -> str:
    return f"oura:{user_id}:{day.isoformat()}"


def oura_identity(ev: OuraSynced) -> str:
    """A day's first version keeps the identity it always had; a revision adds its number."""
    base = oura_day_ref(ev.user_id, ev.date)
    return base if ev.revision == 0 else f"{base}:rev{ev.revision}"


def event_identity(event: LevelUp | AchievementUnlocked) -> str:
    """Stats' events carry their own id: each is republished to Home Assistant once."""
    return event.event_id


# Route key -> the function its route passed as Route(dedup=...) before. Every other routed
# request or event passed none: nothing claimed.
OLD: dict[str, Callable[[Any], str | None]] = {
    "activities_log": activity_identity,
    "activity_completed": activity_identity,
    "oura_synced": oura_identity,
    "levelup": event_identity,
    "achievement": event_identity,
}


def old_key(route_key: str, payload: Any) -> str | Keyless:
    """What the inbox claimed before: the function's key, or the derived one when it gave
    none (None or an empty string: `dedup(payload) or derived_key(...)`)."""
    return OLD[route_key](payload) or KEYLESS


def routes() -> dict[str, Route]:
    """Every route of every installed agent, by contract key."""
    found: dict[str, Route] = {}
    for name, build in registry.builders().items():
        app = build(build_settings(name, broker_url="mqtt://127.0.0.1:1", env={}))
        found.update({r.key: r for r in app.routes})
    return found


def test_every_request_and_event_route_claims_what_the_contract_says() -> None:
    """The routes build no keys of their own; the contract's rule claims on exactly the routes
    that claimed before (and the contract example keys as before)."""
    the_contract = contract()
    claiming = set()
    for key, route in routes().items():
        entry = the_contract.entry(key)
        if entry.kind not in ("request", "event"):
            continue
        assert route.dedup is None, f"{key}: the route builds its own keys"
        rule = entry.dedup_rule
        if rule.claims:
            claiming.add(key)
            example = codec.decode(entry.example.encode(), entry.schema_type)
            assert rule.key(example) == old_key(key, example), key
            assert isinstance(rule.key(example), str), f"{key}: its example names its key"
        else:
            assert entry.dedup == "none", f'{key}: say `dedup = "none"` for a query'
    assert claiming == set(OLD)


def test_activity_completed_and_activities_log_share_one_rule() -> None:
    """The contract said `activity_id` for lifeops/activity/completed while its route keyed by
    activity_id else (source, source_ref): now both topics declare what the runtime does, and
    one activity sent on both counts once (the same key)."""
    c = contract()
    assert c.entry("activity_completed").dedup == c.entry("activities_log").dedup
    req = ActivityLogRequest(user_id="alice", activity_type="gym", source_ref="r1")
    done = ActivityCompleted(
        user_id="alice", activity_type="gym", activity_id="", source_ref="r1", source="manual"
    )
    assert c.entry("activities_log").dedup_rule.key(req) == "activity:manual:r1"
    assert c.entry("activity_completed").dedup_rule.key(done) == "activity:manual:r1"


refs = st.one_of(st.none(), st.just(""), st.text(max_size=30))
sources = st.sampled_from(["lifeops", "challengemode", "manual"])


@settings(max_examples=300, deadline=None)
@given(activity_id=refs, source=sources, source_ref=refs, completed=st.booleans())
def test_activity_keys_are_the_old_keys(
    activity_id: str | None, source: str, source_ref: str | None, completed: bool
) -> None:
    key = "activity_completed" if completed else "activities_log"
    entry = contract().entry(key)
    fields: dict[str, Any] = {"source": source, "source_ref": source_ref}
    if completed:
        fields["activity_id"] = activity_id or ""  # required there
    else:
        fields["activity_id"] = activity_id
    payload = msgspec.structs.replace(
        codec.decode(entry.example.encode(), entry.schema_type), **fields
    )
    assert entry.dedup_rule.key(payload) == old_key(key, payload)


@settings(max_examples=300, deadline=None)
@given(
    user_id=st.text(max_size=20),
    day=st.dates(),
    revision=st.one_of(st.just(0), st.integers(min_value=0, max_value=2**31)),
)
def test_oura_keys_are_the_old_keys(user_id: str, day: dt.date, revision: int) -> None:
    """Byte for byte, but for an empty user id: the old function keyed it `oura::<date>`, the
    contract calls an empty field absent (the derived key). Such a message is refused by its
    handler before anything is kept, so no database holds that key."""
    rule = contract().entry("oura_synced").dedup_rule
    ev = OuraSynced(user_id=user_id, date=day, scores=OuraScores(), revision=revision)
    if user_id == "":
        assert rule.key(ev) is KEYLESS
        with pytest.raises(HandlerError):
            game.check_user_id(user_id)
        return
    assert rule.key(ev) == old_key("oura_synced", ev)


@settings(max_examples=200, deadline=None)
@given(event_id=st.one_of(st.just(""), st.text(max_size=40)), levelup=st.booleans())
def test_event_keys_are_the_old_keys(event_id: str, levelup: bool) -> None:
    key = "levelup" if levelup else "achievement"
    entry = contract().entry(key)
    payload = msgspec.structs.replace(
        codec.decode(entry.example.encode(), entry.schema_type), event_id=event_id
    )
    assert entry.dedup_rule.key(payload) == old_key(key, payload)


def test_the_stored_oura_ref_is_the_contract_key() -> None:
    """The Stats handler's Oura day ref (source_ref and activity id seed) is the contract key."""
    from stats_agent.handlers import oura_identity as current

    for revision in (0, 1, 7):
        ev = OuraSynced(
            user_id="alice",
            date=dt.date(2026, 11, 26),
            scores=OuraScores(),
            revision=revision,
        )
        assert current(ev) == oura_identity(ev)
    assert current(ev) == "oura:alice:2026-11-26:rev7"
