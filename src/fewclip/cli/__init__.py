"""The ``fewclip`` command. A thin layer: it connects the image world and the feature world and
holds no method logic of its own.

Commands: ``demo``, ``extract``, ``fit``, ``predict``, ``evaluate``, ``serve``, ``export``,
``bench``, ``reproduce``, ``cache ls|info|verify|gc|rm``, ``datasets check``. Run
``fewclip COMMAND --help`` for each.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any, TextIO

import typer

from fewclip.cli import data_cmds, deploy_cmds, fit_cmds, run_cmds  # noqa: F401
from fewclip.cli._app import STATE, app
from fewclip.cli._common import handle_exception

# `fewclip --help` lists the commands in the order of a user's path: serve and export after
# predict and evaluate (typer lists them in registration order, i.e. module import order)
_ORDER = ("extract", "fit", "predict", "evaluate", "serve", "export")


def _rank(command: typer.models.CommandInfo) -> int:
    name = command.name or getattr(command.callback, "__name__", "")
    return _ORDER.index(name) if name in _ORDER else len(_ORDER)


app.registered_commands.sort(key=_rank)

__all__ = ["app", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script: one clear line per user error, exit codes by kind."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            # click's context and invoke, without typer's main(): that one turns Ctrl-C into a
            # bare exit 130, losing what the interrupted command says it kept
            command = typer.main.get_command(app)
            with command.make_context("fewclip", args) as ctx:
                rv = command.invoke(ctx)
    except BaseException as exc:
        if isinstance(exc, SystemExit):
            code = exc.code if isinstance(exc.code, int) else 1
        else:
            code = handle_exception(exc, STATE["debug"] or "--debug" in args)
        if argv is None:
            _exit(code)
        return code
    code = rv if isinstance(rv, int) else 0
    if argv is None:
        _exit(code)
    return code


def _exit(code: int) -> None:
    """End the console process: flush the output, then leave without the interpreter's
    teardown, which spends about a second unloading torch, open_clip and transformers after
    every command has finished its work (files are closed and renamed into place by then;
    ``FEWCLIP_NORMAL_EXIT=1`` keeps the normal exit, e.g. for coverage tools)."""
    if os.environ.get("FEWCLIP_NORMAL_EXIT") == "1":
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: `fewclip ... | head`
            stream.flush()
    os._exit(code)


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
    **_: Any,
) -> None:
    """Library warnings as one ``note:`` line on stderr, without a source path."""
    print(f"note: {message}", file=sys.stderr)
