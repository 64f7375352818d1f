"""The CLI reference as Markdown, generated from the commands themselves (so it cannot drift).

``python -m fewclip.cli.reference`` prints it; the documentation site builds its CLI page
from :func:`markdown`.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import typer

__all__ = ["markdown"]


# typer vendors its own click; its classes are recognised by what they have, not by type
def _commands(command: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every command below ``command`` (depth first, in registration order), with its path."""
    if hasattr(command, "commands"):
        for name, sub in command.commands.items():
            if not sub.hidden:
                yield from _commands(sub, (*path, name))
    else:
        yield path, command


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _help(command: Any) -> str:
    """The command's help text, with click's ``\\b`` (no-rewrap) markers turned into code."""
    text = inspect.cleandoc(command.help or "")
    out: list[str] = []
    in_block = False
    for line in text.splitlines():
        if line.strip() == "\b":
            out.append("```text")
            in_block = True
            continue
        if in_block and not line.strip():
            out.append("```")
            in_block = False
        out.append(line)
    if in_block:
        out.append("```")
    return "\n".join(out)


def _default(param: Any) -> str:
    if param.required:
        return "required"
    value = param.default
    if value is None or callable(value) or value == () or value is False:
        return ""
    return f"`{value}`"


def _section(path: tuple[str, ...], command: Any) -> str:
    name = " ".join(("fewclip", *path))
    ctx = command.context_class(command, info_name=name)
    lines = [f"## `{name}`", "", _help(command), "", "```text", command.get_usage(ctx), "```", ""]
    rows = []
    for param in command.params:
        if getattr(param, "hidden", False):
            continue
        if param.param_type_name == "argument":
            names = f"`{(param.metavar or param.name or '').upper()}`"
            help_text = getattr(param, "help", None) or ""
        else:
            names = ", ".join(f"`{o}`" for o in (*param.opts, *param.secondary_opts))
            help_text = param.help or ""
        rows.append(f"| {names} | {_default(param)} | {_cell(help_text)} |")
    if rows:
        lines += ["| argument / option | default | meaning |", "|---|---|---|", *rows, ""]
    return "\n".join(lines)


def markdown() -> str:
    """Markdown for every ``fewclip`` command: help text, usage and a table of its options."""
    from fewclip.cli import app  # registers every command

    root = typer.main.get_command(app)
    sections = [_section((), root)]  # the global options (--debug, --version, ...)
    sections += [_section(path, cmd) for path, cmd in _commands(root, ())]
    return "\n".join(sections)


if __name__ == "__main__":
    print(markdown())
