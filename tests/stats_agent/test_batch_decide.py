"""The pure middle of Stats' batches (no database, no broker): the screens of a batch's
messages against what Stats has (`batch.screen_activities`, `batch.screen_oura`), `decide`
(taken ids, repeats in the batch, the replay on each character as it was), `final` and
`settle`. The same code with the database is tested in test_stats_agent and test_batch."""

from __future__ import annotations

import datetime as dt

from lifeops_contract.schemas import (
    ActivityLogReply,
    ActivityLogRequest,
    OuraScores,
    OuraSynced,
)
from mesh import HandlerError, codec
from stats_agent import batch, ledger
from stats_agent.handlers import oura_identity
from stats_agent.rules import load_rules

RULES = load_rules()
KEY = b"s" * 32
NOW = dt.datetime(2026, 3, 10, 12, 0, tzinfo=dt.UTC)
DAY = NOW.date()
NONE = batch.Earlier({}, [])


def _log(i: int, user: str, kind: str = "reading", **kw: object) -> batch.Asked:
    return batch.Asked(i, NOW, user, ActivityLogRequest(user_id=user, activity_type=kind, **kw))  # type: ignore[arg-type]


def _stored(reply: ActivityLogReply) -> str:
    return codec.encode(reply).decode()


def test_screen_answers_what_stats_has_and_refuses_unknown_types() -> None:
    earlier = batch.Earlier({("manual", "r1"): _stored(ActivityLogReply(message="then"))}, [])
    asked = [
        _log(0, "a", source_ref="r1"),
        _log(1, "a", kind="unheard_of"),
        _log(2, "a", source_ref="r2"),
        _log(3, "b", activity_id="mine"),
        _log(4, "b"),
    ]
    s = batch.screen_activities(asked, earlier, RULES, KEY)
    again = s.answers[0]
    assert isinstance(again, ActivityLogReply) and again.duplicate and again.message == "then"
    refused = s.answers[1]
    assert isinstance(refused, HandlerError)
    assert [p.index for p in s.fresh] == [2, 3, 4]
    derived, given, random = (p.grant.activity_id for p in s.fresh)
    assert derived == batch.derived_id(KEY, "manual:r2") != batch.derived_id(b"t" * 32, "manual:r2")
    assert given == "mine" and random not in (derived, given)
    assert s.fresh[0].grant.grants == {"INT": 30}


def _oura(i: int, user: str, revision: int, sleep: int, readiness: int) -> batch.Asked:
    scores = OuraScores(sleep=sleep, readiness=readiness)
    return batch.Asked(
        i, NOW, user, OuraSynced(user_id=user, date=DAY, scores=scores, revision=revision)
    )


def test_an_oura_version_grants_only_what_the_day_has_not_had() -> None:
    """Stored: revision 0 granted STA 30, WIS 15. The batch: revision 0 again (answered), a
    revision 1 with better sleep only, a revision 2 that is worse (nothing new), and another
    user's first day with zero scores (no XP)."""
    first = batch.OuraVersion("u", DAY, 0, {"STA": 30, "WIS": 15}, _stored(ActivityLogReply()))
    asked = [
        _oura(0, "u", 0, 50, 60),
        _oura(1, "u", 1, 80, 60),
        _oura(2, "u", 2, 10, 10),
        _oura(3, "v", 0, 0, 0),
    ]
    s = batch.screen_oura(asked, batch.Earlier({}, [first]), RULES, KEY, oura_identity)
    assert isinstance(s.answers[0], ActivityLogReply) and s.answers[0].duplicate
    (revised,) = s.fresh
    assert revised.grant.grants == {"WIS": 24 - 15} and not revised.grant.new_activity
    assert (revised.day, revised.revision, revised.source_ref) == (DAY, 1, f"oura:u:{DAY}:rev1")
    assert revised.grant.activity_id == batch.derived_id(KEY, f"oura:u:{DAY}:rev1")
    nothing, zero = s.answers[2], s.answers[3]
    assert isinstance(nothing, ActivityLogReply) and nothing.message == "no new XP for this day"
    assert isinstance(zero, ActivityLogReply) and zero.message == "no XP for these scores"
    assert batch.oura_increment({"A": 5, "B": 3}, {"A": 7, "B": 1}) == {"B": 2}


def test_decide_replays_each_character_from_where_it_was() -> None:
    """A taken id of another user is refused, of the same user answered; a repeat inside the
    batch is the first one's answer; the rest continue each character's totals."""
    asked = [
        _log(0, "a", activity_id="x"),
        _log(1, "a", activity_id="theirs"),
        _log(2, "a", activity_id="old"),
        _log(3, "a", activity_id="x"),
        _log(4, "b", activity_id="x"),
        _log(5, "c", activity_id="y", kind="gym_session"),
    ]
    fresh = batch.screen_activities(asked, NONE, RULES, KEY).fresh
    taken = {"theirs": ("z", "{}"), "old": ("a", _stored(ActivityLogReply(message="old")))}
    before = {
        "a": ledger.Character(
            total_xp=100, activities=4, stat_xp={"INT": 100}, achievements=["first_activity"]
        )
    }
    d = batch.decide(fresh, taken, before, RULES)
    assert [p.index for p in d.todo] == [0, 5]
    refused, old = d.answers[1], d.answers[2]
    assert isinstance(refused, HandlerError) and refused.code == "activity_id_taken"
    assert isinstance(old, ActivityLogReply) and old.duplicate and old.message == "old"
    assert d.gains == {"a": (30, 1), "c": (70, 1)}
    assert d.stat_gains == {("a", "INT"): 30, ("c", "STR"): 50, ("c", "STA"): 20}
    assert d.characters["a"].total_xp == 130 and d.characters["a"].stat_xp == {"INT": 130}
    assert before["a"].total_xp == 100  # the loaded character is not changed
    assert d.applied[0].reply.total_xp == 130 and d.applied[1].reply.total_xp == 70
    assert ("c", "first_activity", "First steps", "y") in d.awards
    assert ("a", "first_activity") not in {(u, c) for u, c, _, _ in d.awards}
    reply, won = batch.final(d.applied[1], awarded=set())  # another agent was first
    assert won == [] and reply.achievements == [] and d.applied[1].awards
    answers: batch.Answers = {0: d.applied[0].reply}
    settled = batch.settle(d.later, answers)
    repeat, other = settled[3], settled[4]
    assert isinstance(repeat, ActivityLogReply) and repeat.duplicate
    assert isinstance(other, HandlerError) and other.code == "activity_id_taken"
