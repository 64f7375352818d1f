"""Every option of every `fewclip` command is passed by at least one test.

A static scan of the test sources: an option counts as tested when one of its strings (the
long form, a short form such as ``-k``, or a ``--no-...`` secondary form) appears in some test
file under tests/ as a quoted string, e.g. ``"--top-k"`` or ``'-k'``. This file itself is left
out of the scan, so that naming an option here never counts as testing it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

import fewclip.cli

TESTS = Path(__file__).resolve().parents[1]
#: click's help option: every command has it, and test_commands.py runs it on each.
HELP_OPTIONS = frozenset({"--help", "-h"})


def _commands(cmd: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    """The root group, every sub-group and every leaf command, with its path (typer vendors
    click: groups are recognised by their ``commands``, not by type)."""
    yield " ".join(("fewclip", *path)), cmd
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from _commands(sub, (*path, name))


def _options() -> dict[str, list[tuple[str, ...]]]:
    """Command path -> its options, each as the tuple of its strings (help excluded)."""
    root = typer.main.get_command(fewclip.cli.app)
    found: dict[str, list[tuple[str, ...]]] = {}
    for path, cmd in _commands(root):
        for param in cmd.params:
            if param.param_type_name != "option":
                continue
            names = tuple(o for o in (*param.opts, *param.secondary_opts) if o not in HELP_OPTIONS)
            if names:
                found.setdefault(path, []).append(names)
    return found


def _quoted_strings_in_tests() -> set[str]:
    """Every option-like string literal ('-x', "--long-name") in tests/**/*.py but this file."""
    quoted = re.compile(r"""(["'])(--?[A-Za-z0-9][A-Za-z0-9-]*)\1""")
    me = Path(__file__).resolve()
    seen: set[str] = set()
    for path in TESTS.rglob("*.py"):
        if path.resolve() == me:
            continue
        seen.update(m.group(2) for m in quoted.finditer(path.read_text(encoding="utf-8")))
    return seen


def test_the_walk_finds_the_commands_and_their_options() -> None:
    """Guard the scan itself: a walk that found nothing would pass trivially."""
    options = _options()
    for command in ("fewclip", "fewclip fit", "fewclip predict", "fewclip cache ls"):
        assert command in options, sorted(options)
    assert ("--top-k", "-k") in options["fewclip predict"]
    assert ("--verify", "--no-verify") in options["fewclip cache info"]
    assert sum(len(v) for v in options.values()) > 80


def test_every_option_of_every_command_appears_quoted_in_a_test() -> None:
    seen = _quoted_strings_in_tests()
    untested = {
        path: ["/".join(names) for names in opts if not any(n in seen for n in names)]
        for path, opts in _options().items()
    }
    untested = {path: opts for path, opts in untested.items() if opts}
    report = "\n".join(f"  {path}: {', '.join(opts)}" for path, opts in sorted(untested.items()))
    assert not untested, f"options that no test under tests/ passes (as a quoted string):\n{report}"
