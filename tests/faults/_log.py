"""The session's fault log, shared by the fault tests and the summary hooks of tests/conftest.py
(which also merges the logs of pytest-xdist workers)."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

OUTCOMES = ("detected", "repaired", "correct", "traceback", "silent")


@dataclass
class FaultLog:
    counts: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))

    def add(self, component: str, outcome: str, *, lost: int = 0) -> None:
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome {outcome!r} is not one of {OUTCOMES}")
        self.counts[component]["injected"] += 1
        self.counts[component][outcome] += 1
        self.counts[component]["lost"] += lost

    def table(self) -> str:
        head = ("component", "injected", *OUTCOMES, "files lost")
        rows = [head, tuple("---" for _ in head)]
        total: Counter[str] = Counter()
        for comp in sorted(self.counts):
            c = self.counts[comp]
            total.update(c)
            rows.append((comp, str(c["injected"]), *(str(c[o]) for o in OUTCOMES), str(c["lost"])))
        rows.append(
            (
                "**all**",
                str(total["injected"]),
                *(str(total[o]) for o in OUTCOMES),
                str(total["lost"]),
            )
        )
        return "\n".join("| " + " | ".join(r) + " |" for r in rows)

    def to_json(self) -> dict[str, dict[str, int]]:
        return {comp: dict(c) for comp, c in self.counts.items()}

    def merge(self, data: dict[str, dict[str, int]]) -> None:
        for comp, c in data.items():
            self.counts[comp].update(c)


#: The log of this process.
FAULTS = FaultLog()
