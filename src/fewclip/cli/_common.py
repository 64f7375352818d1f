"""What every command shares: errors and exit codes, output modes, common options, loaders."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from fewclip.backbones.base import Backbone
    from fewclip.data.types import Dataset

# Exit codes (documented in the README and in `fewclip --help`).
EXIT_OK = 0
EXIT_ERROR = 1  # bad input or data: a clear one-line message
EXIT_USAGE = 2  # bad command-line arguments (click's own code)
EXIT_WEIGHTS = 3  # model weights missing or not loadable
EXIT_MISMATCH = 4  # adapter and backbone do not match
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = (
    "Exit codes: 0 ok, 1 bad input or data, 2 bad arguments, 3 model weights missing, "
    "4 adapter/backbone mismatch, 130 interrupted. Add --debug before the command for a "
    "traceback."
)


class CLIError(Exception):
    """A user error: shown as one line, exit code ``code``."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def default_store() -> Path:
    """``$FEWCLIP_STORE``, else ``$XDG_CACHE_HOME/fewclip/features``, else ``~/.cache/...``."""
    env = os.environ.get("FEWCLIP_STORE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "fewclip" / "features"


def echo(text: str = "", *, quiet: bool = False, err: bool = False) -> None:
    if not quiet:
        typer.echo(text, err=err)


def emit_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def int_list(option: str, text: str) -> list[int]:
    """``"1,2,4"`` → ``[1, 2, 4]``; a ``BadParameter`` naming the option otherwise."""
    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise typer.BadParameter(
            f"expected comma-separated integers, found {text!r}", param_hint=option
        ) from None
    if not values or min(values) < 1:
        raise typer.BadParameter(f"expected positive integers, found {text!r}", param_hint=option)
    return values


def str_list(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def parse_params(items: Sequence[str], option: str = "--param") -> dict[str, Any]:
    """``["alpha=1.0", "epochs=20"]`` → ``{"alpha": 1.0, "epochs": 20}`` (values read as YAML)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected key=value, found {item!r}", param_hint=option)
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def load_dataset(data: str, root: Path | None) -> Dataset:
    """A benchmark name (with ``root`` = ``$DATA``), an image folder or a manifest."""
    from fewclip import data as fdata

    if not data:
        raise CLIError("--data: expected a benchmark name, an image folder or a manifest file")
    return fdata.load(data, root)


def load_backbone(
    name: str, pretrained: str | None, device: str, precision: str, *, quiet: bool = False
) -> Backbone:
    import fewclip.backbones as fb

    bb = fb.load(name, pretrained=pretrained, device=device, precision=precision)
    if name.startswith("fewclip-tiny"):
        echo(
            f"note: {name} is a tiny model with RANDOM, untrained weights (for tests and demos); "
            "its accuracies say nothing about real CLIP models",
            quiet=quiet,
            err=True,
        )
    return bb


def handle_exception(exc: BaseException, debug: bool) -> int:
    """Map an exception to (message on stderr, exit code). Unknown exceptions are bugs."""
    from fewclip.adapter import AdapterError, BackboneMismatchError
    from fewclip.backbones.base import BackboneError, WeightsNotFoundError
    from fewclip.errors import FewclipError

    if isinstance(exc, typer.Exit):
        return int(exc.exit_code)
    show = getattr(exc, "show", None)
    if isinstance(exc, typer.TyperException) and callable(show):
        show()  # usage errors: click's own message and exit code 2
        return int(getattr(exc, "exit_code", EXIT_USAGE))
    if isinstance(exc, (KeyboardInterrupt, typer.Abort)):
        typer.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    if debug:
        import traceback

        traceback.print_exception(type(exc), exc, exc.__traceback__)
    if isinstance(exc, CLIError):
        code = exc.code
    elif isinstance(exc, WeightsNotFoundError):
        code = EXIT_WEIGHTS
    elif isinstance(exc, BackboneMismatchError):
        code = EXIT_MISMATCH
    elif isinstance(
        exc,
        (
            FewclipError,
            AdapterError,
            BackboneError,
            ValueError,
            KeyError,
            TypeError,
            FileNotFoundError,
            NotADirectoryError,
            PermissionError,
            OSError,
            RuntimeError,
            ImportError,
        ),
    ):
        code = EXIT_ERROR
    else:
        if not debug:
            import traceback

            traceback.print_exception(type(exc), exc, exc.__traceback__)
        typer.echo(f"fewclip: internal error ({type(exc).__name__}); please report it", err=True)
        return 70
    msg = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    msg = " ".join(msg.split()) if "\n" not in msg.strip() else msg.strip()
    typer.echo(f"error: {msg}", err=True)
    return code


def stderr_is_tty() -> bool:
    return sys.stderr.isatty()
