"""The traffic of a reliability run: completions and activity logs for many users at a steady
rate, each retried until answered (as docs/reliability.md tells outside clients to), and what
the accepted ones must add up to.

Three kinds: timeline completions (LifeOps, then Stats through receipts), activity logs with a
source_ref, and keyless activity logs (no activity_id, no source_ref: a retry is recognised by
its correlation data alone). Keyless logs go to users of their own, so that their XP counts
them one by one (each grants 30 INT)."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
import uuid
from collections.abc import Iterator

from lifeops_contract import contract
from lifeops_contract.schemas import (
    ActivityLogRequest,
    TimelineCompleteRequest,
    TimelineGetRequest,
    TimelineItemState,
)
from mesh import MeshClient, MeshError

REQUEST_TIMEOUT_S = 3.0  # the driver's wait for each reply, before it sends again


class Driver:
    """Sends requests at a steady rate until told to stop; each is retried until answered."""

    KEYLESS_XP = 30  # "reading": INT 30

    def __init__(
        self,
        url: str,
        users: list[str],
        rng: random.Random,
        items: list[TimelineItemState],
        keyless_users: list[str] | None = None,
    ) -> None:
        self.url = url
        self.users = users
        self.keyless_users = keyless_users or []
        self.keyless_accepted: dict[str, int] = dict.fromkeys(self.keyless_users, 0)
        self.rng = rng
        self.items = items  # LifeOps' timeline, as it announces it
        self.xp = {i.code: sum(i.xp.values()) for i in self.items}
        self.expected: dict[str, int] = dict.fromkeys(users, 0)
        self.expected_refs: set[tuple[str, str]] = set()  # (source, source_ref) in Stats
        self.sent = 0
        self.accepted = 0
        self.last_ok: dict[str, float] = {"complete": 0.0, "log": 0.0}
        self.failures: list[str] = []

    def work(self) -> Iterator[tuple[str, str, TimelineCompleteRequest | ActivityLogRequest]]:
        """Completions of past days (each user, item and day once) and direct activity logs."""
        now = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
        for back in range(1, 3650):
            at = now - dt.timedelta(days=back)
            batch: list[tuple[str, str, TimelineCompleteRequest | ActivityLogRequest]] = []
            for uid in self.users:
                for item in self.items:
                    batch.append(
                        (
                            "complete",
                            uid,
                            TimelineCompleteRequest(
                                user_id=uid, item_code=item.code, completed_at=at
                            ),
                        )
                    )
                batch.append(
                    (
                        "log",
                        uid,
                        ActivityLogRequest(
                            user_id=uid,
                            activity_type="reading",
                            source="manual",
                            source_ref=f"rel-{uid}-{back}",
                        ),
                    )
                )
            for uid in self.keyless_users:
                batch.append(
                    ("keyless", uid, ActivityLogRequest(user_id=uid, activity_type="reading"))
                )
            self.rng.shuffle(batch)
            yield from batch

    async def one(
        self,
        client: MeshClient,
        kind: str,
        uid: str,
        req: TimelineCompleteRequest | ActivityLogRequest,
        deadline_s: float = 180,
    ) -> None:
        end = time.monotonic() + deadline_s
        key = "timeline_complete" if kind == "complete" else "activities_log"
        # A keyless request is the same request only with the same correlation data; the
        # keyed kinds are retried as new requests (their key makes them the same).
        same = uuid.uuid4().bytes if kind == "keyless" else None
        while time.monotonic() < end:
            self.sent += 1
            try:
                r = await client.request(key, req, timeout=REQUEST_TIMEOUT_S, correlation=same)
            except MeshError:
                await asyncio.sleep(0.3)
                continue
            self.last_ok["complete" if kind == "complete" else "log"] = time.monotonic()
            if isinstance(req, TimelineCompleteRequest):
                if r.success or (r.error and r.error.code == "already_completed"):
                    assert req.completed_at is not None
                    self.accepted += 1
                    self.expected[uid] += self.xp[req.item_code]
                    day = req.completed_at.date().isoformat()
                    self.expected_refs.add(("lifeops", f"{uid}:{req.item_code}:{day}"))
                    return
            elif r.success and kind == "keyless":
                self.accepted += 1
                self.keyless_accepted[uid] += 1
                return
            elif r.success:
                self.accepted += 1
                self.expected[uid] += 30
                self.expected_refs.add(("manual", req.source_ref or ""))
                return
            self.failures.append(f"refused: {r.error}")
            return
        self.failures.append(f"no answer within {deadline_s}s")

    async def _one_then_release(
        self,
        sem: asyncio.Semaphore,
        client: MeshClient,
        kind: str,
        uid: str,
        req: TimelineCompleteRequest | ActivityLogRequest,
    ) -> None:
        try:
            await self.one(client, kind, uid, req)
        finally:
            sem.release()

    async def run(self, stop: asyncio.Event, *, rate: float = 40.0, concurrency: int = 8) -> None:
        sem = asyncio.Semaphore(concurrency)
        tasks: set[asyncio.Task[None]] = set()
        async with MeshClient(self.url, contract()) as client:
            for kind, uid, req in self.work():
                if stop.is_set():
                    break
                await sem.acquire()

                task = asyncio.create_task(self._one_then_release(sem, client, kind, uid, req))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                await asyncio.sleep(1 / rate)
            if tasks:
                await asyncio.gather(*tasks)


async def timeline_items(url: str) -> list[TimelineItemState]:
    """The items LifeOps runs (what a completion grants), asked over the mesh."""
    async with MeshClient(url, contract()) as client:
        reply = await client.request("timeline_get", TimelineGetRequest(user_id="reliability"))
    if not reply.success or reply.timeline is None:
        raise MeshError(f"LifeOps did not tell its timeline: {reply.error}")
    return list(reply.timeline.items)
