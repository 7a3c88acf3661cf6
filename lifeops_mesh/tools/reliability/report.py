"""What a reliability run found: faults with recovery times; per message, what was lost or
doubled; per event, what a subscriber received live and what it could catch up on; per
retained state, whether the broker ended up holding what the databases committed."""

from __future__ import annotations

import msgspec


class Fault(msgspec.Struct):
    name: str
    at_s: float
    recovery_s: float | None = None  # from the end of the fault to the next answered request


class Report(msgspec.Struct):
    backend: str
    users: int
    faults: list[Fault]
    skipped: list[str] = []  # faults this machine cannot inject, and why
    sent: int = 0
    accepted: int = 0
    lost: int = 0  # accepted messages whose effect is not in Stats
    duplicated: int = 0  # messages counted more than once
    expected_xp: int = 0
    stored_xp: int = 0
    events_committed: int = 0
    events_live: int = 0  # distinct events the subscriber received as they happened
    events_caught_up: int = 0  # distinct events stats/events/recent lists
    events_unrecoverable: int = 0  # committed, neither received nor listed: must be 0
    events_phantom: int = 0  # received but never committed: must be 0
    states: int = 0  # retained state topics compared with the databases
    states_stale: int = 0  # the broker holds something else: must be 0
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.duplicated == 0
            and self.expected_xp == self.stored_xp
            and self.events_unrecoverable == 0
            and self.events_phantom == 0
            and self.states_stale == 0
        )

    def table(self) -> str:
        missed = self.events_committed - self.events_live
        events_bad = f"{self.events_unrecoverable} / {self.events_phantom}"
        states_ok = f"{self.states - self.states_stale} / {self.states}"
        rows = [
            ("backend", self.backend),
            ("users", str(self.users)),
            ("faults injected", str(len(self.faults))),
            ("messages sent (requests incl. retries)", str(self.sent)),
            ("accepted", str(self.accepted)),
            ("lost", str(self.lost)),
            ("duplicated", str(self.duplicated)),
            ("XP expected / stored", f"{self.expected_xp} / {self.stored_xp}"),
            ("events committed", str(self.events_committed)),
            ("events delivered live", f"{self.events_live} ({missed} missed live)"),
            ("events listed by stats/events/recent", str(self.events_caught_up)),
            ("events unrecoverable / phantom", events_bad),
            ("retained states equal to the database", states_ok),
            ("run time", f"{self.duration_s:.1f} s"),
        ]
        width = max(len(k) for k, _ in rows)
        out = [f"{k:<{width}}  {v}" for k, v in rows]
        out.append("")
        out.append(f"{'fault':<36} {'at':>7} {'recovery':>9}")
        for f in self.faults:
            rec = f"{f.recovery_s:.2f} s" if f.recovery_s is not None else "-"
            out.append(f"{f.name:<36} {f.at_s:>6.1f}s {rec:>9}")
        out.extend(f"not injected: {why}" for why in self.skipped)
        return "\n".join(out)
