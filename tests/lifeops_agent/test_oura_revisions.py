"""A day Oura revises after it was imported: LifeOps stores the new scores and Stats grants,
per stat, only what the better version adds (through the real broker, SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from lifeops_contract.schemas import (
    CharacterGetRequest,
    CharacterReply,
    OuraDay,
    OuraImportReply,
    OuraImportRequest,
    OuraScores,
)
from mesh.broker.process import MosquittoProcess
from mesh.client import MeshClient
from mesh.testing.wait import eventually
from tests.conftest import user

Start = Callable[..., Any]
DAY = dt.date(2026, 11, 20)


async def _import(client: MeshClient, uid: str, **scores: int) -> OuraImportReply:
    reply: OuraImportReply = await client.request(
        "oura_import",
        OuraImportRequest(user_id=uid, days=[OuraDay(date=DAY, scores=OuraScores(**scores))]),
    )
    assert reply.success, reply.error
    return reply


async def _sheet(client: MeshClient, uid: str, total: int) -> CharacterReply | None:
    r: CharacterReply = await client.request("character_get", CharacterGetRequest(user_id=uid))
    return r if r.success and r.total_xp == total else None


async def test_revised_day_grants_only_what_the_better_version_adds(
    broker: MosquittoProcess, new_db: Callable[[], str], start_agent: Start, tester: MeshClient
) -> None:
    """Partial day, completed, revised down, revised up: XP is the rules' XP of the best version
    per stat (WIS 27, STA 35, DEX 27 = 89), the day counts as one activity, a repeat is skipped."""
    uid = user()
    async with start_agent("stats", broker, new_db()), start_agent("lifeops", broker, new_db()):
        first = await _import(tester, uid, sleep=80, readiness=70)  # WIS 24 + STA 35
        assert (first.imported, first.revised, first.skipped) == (1, 0, 0)
        await eventually(lambda: _sheet(tester, uid, 59), what="XP of the partial day")

        completed = await _import(tester, uid, activity=90)  # the other scores are kept: DEX 27
        assert (completed.imported, completed.revised) == (0, 1)
        await eventually(lambda: _sheet(tester, uid, 86), what="XP of the completed day")

        down = await _import(tester, uid, sleep=60)  # WIS 18 < 24: nothing taken, nothing new
        assert down.revised == 1
        up = await _import(tester, uid, sleep=90)  # WIS 27: 3 more
        assert up.revised == 1
        sheet = await eventually(lambda: _sheet(tester, uid, 89), what="XP of the best version")
        assert sheet is not None and sheet.character is not None
        assert {s: v.xp for s, v in sheet.character.stats.items() if v.xp} == {
            "WIS": 27,
            "STA": 35,
            "DEX": 27,
        }
        assert sheet.character.activities == 1

        again = await _import(tester, uid, sleep=90, readiness=70, activity=90)
        assert (again.imported, again.revised, again.skipped) == (0, 0, 1)
        assert await _sheet(tester, uid, 89) is not None
