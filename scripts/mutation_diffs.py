"""Print the changed lines of surviving mutmut mutants, fast (no ``mutmut show`` per mutant).

    python scripts/mutation_diffs.py [--mutants mutants] [--device-only]

Reads the ``mutants/**/*.py`` files mutmut 3 writes (each mutant is a function
``x_name__mutmut_N`` beside ``x_name__mutmut_orig``) and the ``.meta`` exit codes, and prints
one line per survivor: its name, the original line and the mutated line. ``--device-only``
prints only the survivors whose change is confined to a torch device argument (``device=…``
dropped or set to None, ``.to(dev)`` → ``.to(None)``, ``.to(dev, dtype)`` → ``.to(dtype)``),
as candidate lines for ``tests/mutation_equivalent.txt``: on the CPU, where the tests run,
``None`` is the CPU, so such a change is only observable on a GPU. Review before listing.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import re
from pathlib import Path

SURVIVED = {0, 33}
DEVICE = r"(?:dev|device|self\._device|[\w.]+\.device)"


def _functions(path: Path) -> dict[str, str]:
    text = path.read_text()
    out = {}
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef) and "__mutmut_" in node.name:
            out[node.name] = ast.get_source_segment(text, node) or ""
    return out


def _change(orig: str, mutant: str) -> tuple[str, str]:
    a = orig.splitlines()[1:]  # skip the def line (its name differs)
    b = mutant.splitlines()[1:]
    minus = [line.strip() for line in difflib.ndiff(a, b) if line.startswith("- ")]
    plus = [line.strip() for line in difflib.ndiff(a, b) if line.startswith("+ ")]
    return " ".join(m[2:] for m in minus), " ".join(p[2:] for p in plus)


def device_only(old: str, new: str) -> bool:
    """The mutation only drops a device argument or replaces it with None."""
    candidates = [
        (rf"device={DEVICE}", "device=None"),
        (rf"device={DEVICE}, ", ""),
        (rf", device={DEVICE}", ""),
        (rf"\.to\({DEVICE}\)", ".to(None)"),
        (rf"\.to\({DEVICE}, ", ".to(None, "),
        (rf"\.to\({DEVICE}, ", ".to("),
        (r"^dev = self\._device$", "dev = None"),
    ]
    for pattern, repl in candidates:
        for m in re.finditer(pattern, old):
            if old[: m.start()] + re.sub(pattern, repl, m.group(0)) + old[m.end() :] == new:
                return True
    return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mutants", type=Path, default=Path("mutants"))
    ap.add_argument("--device-only", action="store_true")
    args = ap.parse_args()
    for meta in sorted(args.mutants.rglob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        funcs = _functions(meta.with_suffix(""))
        for name, code in codes.items():
            if code not in SURVIVED:
                continue
            short = name.split(".")[-1]
            orig = funcs.get(short.rsplit("__mutmut_", 1)[0] + "__mutmut_orig", "")
            old, new = _change(orig, funcs.get(short, ""))
            if args.device_only:
                if device_only(old, new):
                    print(
                        f"{name} only observable on a GPU: {old!r} → {new!r} changes only a "
                        "device argument, and None is the CPU the tests run on."
                    )
            else:
                print(f"{name}\t{old}\t{new}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
