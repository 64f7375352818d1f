"""Print the changed lines of surviving mutmut mutants, fast (no ``mutmut show`` per mutant).

    python scripts/mutation_diffs.py [--mutants mutants] [--only cocoop] [--equivalent]
                                     [--timeouts]

Reads the ``mutants/**/*.py`` files mutmut 3 writes (each mutant is a function
``x_name__mutmut_N`` beside ``x_name__mutmut_orig``) and the ``.meta`` exit codes, and prints
one line per survivor: its name, the original line and the mutated line (``--timeouts``: the
mutants that timed out instead, which mutmut counts as killed). ``--equivalent``
prints, as candidate lines for ``tests/mutation_equivalent.txt``, only the survivors of three
classes that change nothing observable on the CPU the tests run on:

- a torch device argument dropped or set to None (``device=…``, ``.to(dev)`` → ``.to(None)``,
  ``.to(dev, dtype)`` → ``.to(dtype)``): None is the CPU, so only a GPU run could tell;
- ``optimizer.zero_grad(set_to_none=…)`` flipped: zeroed or freed gradients give the same step;
- an optimiser's ``fused=`` flag changed: the same update by another kernel (last-bit
  rounding differences at most).

Review the lines before listing them.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import re
from pathlib import Path

from mutation_report import TIMEOUTS, survived  # scripts/ is sys.path[0] when run as a script

DEVICE = r"(?:dev|device|self\._device|[\w.]+\.device)"


def _functions(path: Path) -> dict[str, str]:
    text = path.read_text()
    lines = text.splitlines()
    out = {}
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef) and "__mutmut_" in node.name:
            # by line numbers: ast.get_source_segment rescans the file for every node
            out[node.name] = "\n".join(lines[node.lineno - 1 : node.end_lineno])
    return out


def _change(orig: str, mutant: str) -> tuple[str, str]:
    # the def lines differ by the function's name: compare them without it
    a = re.sub(r"__mutmut_orig\b", "", orig, count=1).splitlines()
    b = re.sub(r"__mutmut_\d+\b", "", mutant, count=1).splitlines()
    diff = list(difflib.ndiff(a, b))
    minus = [line[2:].strip() for line in diff if line.startswith("- ")]
    plus = [line[2:].strip() for line in diff if line.startswith("+ ")]
    return " ".join(minus), " ".join(plus)


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


def equivalent_reason(old: str, new: str) -> str | None:
    """The reason a survivor of one of the three classes above changes nothing observable."""
    if device_only(old, new):
        return (
            f"only observable on a GPU: {old.strip()!r} → {new.strip()!r} changes only a device "
            "argument, and None is the CPU the tests run on."
        )
    if "zero_grad(set_to_none=" in old and "zero_grad(" in new and old.count("(") == new.count("("):
        return "zero_grad zeroes the gradients instead of freeing them: the same optimiser step."
    if "fused=" not in old:
        return None
    if re.sub(r"fused=[^,)]*", "", old) == re.sub(r"fused=[^,)]*", "", new) or (
        "fused=" in old and "fused=" not in new and re.sub(r",?\s*fused=[^,)]*", "", old) == new
    ):
        return "the optimiser's fused flag selects a kernel, not the update it computes."
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mutants", type=Path, default=Path("mutants"))
    ap.add_argument("--equivalent", action="store_true")
    ap.add_argument("--timeouts", action="store_true", help="the timed-out mutants instead")
    ap.add_argument(
        "--only", action="append", default=[], help="file stem to read (repeatable); default all"
    )
    args = ap.parse_args()
    for meta in sorted(args.mutants.rglob("*.py.meta")):
        if args.only and meta.name.removesuffix(".py.meta") not in args.only:
            continue
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        funcs = _functions(meta.with_suffix(""))
        for name, code in codes.items():
            if (code not in TIMEOUTS) if args.timeouts else not survived(code):
                continue
            short = name.split(".")[-1]
            orig = funcs.get(short.rsplit("__mutmut_", 1)[0] + "__mutmut_orig", "")
            old, new = _change(orig, funcs.get(short, ""))
            if args.equivalent:
                reason = equivalent_reason(old, new)
                if reason:
                    print(f"{name} {reason}")
            else:
                print(f"{name}\t{old}\t{new}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
