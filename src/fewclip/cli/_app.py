"""The typer application objects; command modules register themselves on them."""

from __future__ import annotations

import typer

from fewclip._version import __version__
from fewclip.cli._common import EXIT_CODES_HELP

STATE = {"debug": False}

app = typer.Typer(
    help="fewclip: few-shot adaptation of CLIP models on cached features.\n\n" + EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help: flags without "<bool>", one wrapping
    context_settings={"help_option_names": ["-h", "--help"]},
)
cache_app = typer.Typer(
    help="Inspect and clean the feature store.\n\n\b\nExamples:\n  fewclip cache ls --kind "
    "image\n  fewclip cache info 3fa2c1 --verify\n  fewclip cache rm 3fa2c1",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
datasets_app = typer.Typer(
    help="Check datasets on disk.\n\n\b\nExample:\n  fewclip datasets check dtd eurosat "
    "--root ~/data",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(cache_app, name="cache")
app.add_typer(datasets_app, name="datasets")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fewclip {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """fewclip: few-shot adaptation of CLIP models on cached features."""
    STATE["debug"] = debug
