"""Fill a partial mutmut run with the results of an earlier full run, function by function.

    python scripts/mutation_merge.py --earlier OLD/mutants [--mutants mutants]

For a confirmation run that re-tests only some mutants (``mutmut run NAME ...``: the earlier
survivors and the functions changed since), every mutant left without a result in
``mutants/**/*.py.meta`` takes the earlier run's exit code when its function's source hash
(mutmut's ``hash_by_function_name``) is the same in both runs, so the same mutant of the same
code. Sound only when tests were added, not changed or removed, since the earlier run. Mutants
of changed functions that were not re-run stay without a result, and are counted.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _function(key: str) -> str:
    """``fewclip.methods.gda.x_shared_precision__mutmut_4`` → ``x_shared_precision``."""
    return key.rsplit(".", 1)[-1].rsplit("__mutmut_", 1)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--earlier", type=Path, required=True)
    ap.add_argument("--mutants", type=Path, default=Path("mutants"))
    args = ap.parse_args()
    filled = missing = 0
    for meta_path in sorted(args.mutants.rglob("*.py.meta")):
        old_path = args.earlier / meta_path.relative_to(args.mutants)
        meta = json.loads(meta_path.read_text())
        old = json.loads(old_path.read_text()) if old_path.exists() else {}
        same = {
            name
            for name, h in meta.get("hash_by_function_name", {}).items()
            if old.get("hash_by_function_name", {}).get(name) == h
        }
        codes = meta["exit_code_by_key"]
        for key, code in codes.items():
            if code is not None:
                continue
            earlier = old.get("exit_code_by_key", {}).get(key)
            if earlier is not None and _function(key) in same:
                codes[key] = earlier
                filled += 1
            else:
                missing += 1
        meta_path.write_text(json.dumps(meta))
    print(f"filled {filled} results from the earlier run; {missing} mutants still without one")


if __name__ == "__main__":
    main()
