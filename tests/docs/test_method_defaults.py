"""Every method's page documents each parameter with the default the code has.

The parameter tables of ``docs/methods/*.md`` are what a user reads to choose settings (and
they carry the references' values: Tip-Adapter's grid, TaskRes's α, CLAP's schedule...). A
default changed in the code and not in the docs, or the other way round, fails here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest

from fewclip import methods

DOCS = Path(__file__).resolve().parents[2] / "docs" / "methods"
# page -> the methods it documents
PAGES = {
    "zero-shot-and-linear-probe.md": ["zero-shot", "linear-probe"],
    "tip-adapter.md": ["tip-adapter", "tip-adapter-f"],
    "ape.md": ["ape", "ape-t"],
    "clap.md": ["zs-lp", "clap"],
    "clip-adapter.md": ["clip-adapter"],
    "coop.md": ["coop"],
    "cocoop.md": ["cocoop"],
    "kgcoop.md": ["kgcoop"],
    "prograd.md": ["prograd"],
    "cross-modal-lp.md": ["cross-modal-lp"],
    "gda.md": ["gda"],
    "lp-pp.md": ["lp++"],
    "proker.md": ["proker"],
    "taskres.md": ["taskres"],
    "tip-x.md": ["tip-x"],
}
# a method that takes another's parameters and lists only its differences
DERIVED = {"tip-adapter-f": "tip-adapter", "ape-t": "ape"}
ROW = re.compile(r"^\| `(\w+)` \| `([^`]*)`[^|]*\|")
OWNER = re.compile(r"^(?:## )?`([a-z+\-]+)`")


def documented(page: str) -> dict[str | None, dict[str, str]]:
    """Parameter rows per owner: the method named by the heading or the paragraph that
    introduces a table (``None``: the page's shared table)."""
    names = set(PAGES[page])
    out: dict[str | None, dict[str, str]] = {}
    owner: str | None = None
    for line in (DOCS / page).read_text().splitlines():
        m = OWNER.match(line)
        if m and m.group(1) in names:
            owner = m.group(1)
        row = ROW.match(line)
        if row:
            out.setdefault(owner, {})[row.group(1)] = row.group(2)
    return out


def _value(text: str) -> Any:
    """A Python literal, or plain arithmetic such as ``2 * 2**30``."""
    try:
        return ast.literal_eval(text)
    except ValueError:
        tree = ast.parse(text, mode="eval")
        allowed = (ast.Expression, ast.BinOp, ast.Constant, ast.Mult, ast.Pow, ast.Add)
        assert all(isinstance(n, allowed) for n in ast.walk(tree)), text
        return eval(compile(tree, "<docs>", "eval"), {"__builtins__": {}})


def test_every_method_has_a_page() -> None:
    assert sorted(n for names in PAGES.values() for n in names) == sorted(methods.available())


@pytest.mark.parametrize(
    ("page", "name"), [(p, n) for p, names in PAGES.items() for n in names], ids=lambda v: v
)
def test_the_documented_defaults_are_the_code_defaults(page: str, name: str) -> None:
    rows = documented(page)
    base = DERIVED.get(name)
    table = {**rows.get(None, {}), **rows.get(base, {}), **rows.get(name, {})}
    params = methods.create(name).get_params()
    assert sorted(table) == sorted(params), f"{page}: documented parameters of {name}"
    for key, text in table.items():
        want = _value(text)
        assert params[key] == want, f"{page}: {name}.{key} is {params[key]!r}, docs say {text}"
        assert type(params[key]) is type(want) or params[key] is None, f"{name}.{key}"
