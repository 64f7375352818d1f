"""The fault-injection suite: each test damages one thing (a file, a process, the numbers),
records what fewclip did about it, and asserts that it was the right thing.

Outcomes recorded with :func:`fault_record` (one per injected fault):

- ``detected``: a clear ``FewclipError`` / one ``error:`` line naming what is wrong;
- ``repaired``: fewclip rebuilt what was damaged by itself and said so;
- ``correct``: the fault changed nothing a user could see (the result equals the clean one);
- ``traceback``: an unexpected exception or a traceback on the command line;
- ``silent``: a wrong or damaged result with no error (a silent wrong answer).

Each test also records the files it found lost or changed that it should not have (``lost``).
At the end of the run the table of outcomes per component is printed (the docs' reliability
page shows it with the command that produced it).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import pytest

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


_LOG = FaultLog()


@pytest.fixture
def fault_record() -> FaultLog:
    """The session's fault log: ``fault_record.add(component, outcome, lost=0)``."""
    return _LOG


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _LOG.counts:
        terminalreporter.write_sep("=", "fault injection")
        terminalreporter.write_line(_LOG.table())
