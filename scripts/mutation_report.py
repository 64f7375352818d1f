"""Summarise a mutmut run: the share of killed mutants per module against the targets.

    python scripts/mutation_report.py [--equivalent tests/mutation_equivalent.txt]

Reads the ``mutants/**/*.py.meta`` files that ``mutmut run`` writes (exit code per mutant:
1 or 3 killed, 0 survived, 33 no test reaches it (counted as a survivor), 36/24/... timeout,
37 caught by the type checker). A timeout counts as killed but is shown apart: it is either a
mutant that makes a test hang (an endless loop: killed) or one whose tests all passed until
time ran out (a survivor). Run timed-out mutants by hand (``MUTANT_UNDER_TEST``) before
trusting them; ``scripts/mutation_diffs.py --timeouts`` lists them. Mutants listed
in the equivalent-mutants file (one ``mutant_name  reason`` per line) count as killed only if
they survived, and are reported apart. Targets: at least 90 % killed in ``functional``,
``protocol`` and ``sampling``, at least 80 % in ``methods/``. Prints a Markdown table and the
survivors that are not explained; exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

KILLED = {1, 3, 24, -24, 36, 152, 255, 37}  # a failing test, a timeout or the type checker
TIMEOUTS = {24, -24, 36, 152}  # mutmut's codes for a run stopped at its time limit


def survived(code: int | None) -> bool:
    """A mutant that ran and was not killed (33, no test reaches it, counts as survived)."""
    return code is not None and code not in (5, 34) and code not in KILLED


TARGETS = {"functional": 0.90, "protocol": 0.90, "sampling": 0.90, "methods": 0.80}


def group(path: Path) -> str:
    """The module group of a source path: ``.../fewclip/methods/gda.py`` → ``methods``,
    ``.../fewclip/functional.py`` → ``functional``."""
    parts = path.parts[path.parts.index("fewclip") + 1 :]
    return parts[0] if len(parts) > 1 else parts[0].removesuffix(".py")


def read_equivalent(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                name, _, reason = line.partition(" ")
                out[name] = reason.strip()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mutants", type=Path, default=Path("mutants"))
    ap.add_argument("--equivalent", type=Path, default=Path("tests/mutation_equivalent.txt"))
    args = ap.parse_args()
    equivalent = read_equivalent(args.equivalent)
    totals: Counter[str] = Counter()
    killed: Counter[str] = Counter()
    timeouts: Counter[str] = Counter()
    explained: Counter[str] = Counter()
    survivors: list[str] = []
    seen: dict[str, int] = {}  # every mutant that ran: name → exit code
    metas = sorted(args.mutants.rglob("*.py.meta"))
    if not metas:
        print(f"no mutmut results under {args.mutants}/: run `make mutation`", file=sys.stderr)
        return 2
    for meta in metas:
        source = Path(str(meta.relative_to(args.mutants)).removesuffix(".meta"))
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        g = group(source)
        for name, code in codes.items():
            if code is None or code in (5, 34):  # not run yet, or skipped
                continue
            totals[g] += 1
            seen[name] = code
            if not survived(code):
                killed[g] += 1
                timeouts[g] += code in TIMEOUTS
            elif name in equivalent:
                explained[g] += 1
            else:  # survived, or no test reaches it (33): both count against the score
                why = "no test reaches it" if code == 33 else f"exit {code}"
                survivors.append(f"{name}  ({why})")
    print("| module | mutants | killed | of them timeouts | equivalent | score | target | met |")
    print("|---|---|---|---|---|---|---|---|")
    ok = True
    for g in sorted(totals):
        score = (killed[g] + explained[g]) / totals[g]
        target = TARGETS.get(g)
        met = "" if target is None else ("yes" if score >= target else "**no**")
        ok = ok and (target is None or score >= target)
        shown = "" if target is None else f"{target:.0%}"
        print(
            f"| {g} | {totals[g]} | {killed[g]} | {timeouts[g]} | {explained[g]} | {score:.1%} "
            f"| {shown} | {met} |"
        )
    if survivors:
        print(f"\n{len(survivors)} survivors not listed as equivalent:")
        print("\n".join(f"- {s}" for s in survivors))
    stale = [
        f"{name}  ({'killed' if name in seen else 'not in this run'})"
        for name in equivalent
        if name not in seen or not (survived(seen[name]) or seen[name] in TIMEOUTS)
    ]
    if stale:  # a line for a mutant a test now kills, or a name from an older numbering
        print(f"\n{len(stale)} lines of {args.equivalent} name no survivor of this run:")
        print("\n".join(f"- {s}" for s in stale))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
