"""What a reliability run found: faults with recovery times, messages, losses, duplicates."""

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
    sent: int = 0
    accepted: int = 0
    lost: int = 0
    duplicated: int = 0
    expected_xp: int = 0
    stored_xp: int = 0
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated == 0

    def table(self) -> str:
        rows = [
            ("backend", self.backend),
            ("users", str(self.users)),
            ("faults injected", str(len(self.faults))),
            ("messages sent (requests incl. retries)", str(self.sent)),
            ("accepted", str(self.accepted)),
            ("lost", str(self.lost)),
            ("duplicated", str(self.duplicated)),
            ("XP expected / stored", f"{self.expected_xp} / {self.stored_xp}"),
            ("run time", f"{self.duration_s:.1f} s"),
        ]
        width = max(len(k) for k, _ in rows)
        out = [f"{k:<{width}}  {v}" for k, v in rows]
        out.append("")
        out.append(f"{'fault':<28} {'at':>7} {'recovery':>9}")
        for f in self.faults:
            rec = f"{f.recovery_s:.2f} s" if f.recovery_s is not None else "-"
            out.append(f"{f.name:<28} {f.at_s:>6.1f}s {rec:>9}")
        return "\n".join(out)
