"""What every command shares: errors and exit codes, output modes, common options, loaders."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from fewclip.errors import FewclipError

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
EXIT_BUG = 70  # anything that is not a FewclipError: a bug, said in one line

EXIT_CODES_HELP = (
    "Exit codes: 0 ok, 1 bad input or data, 2 bad arguments, 3 model weights missing, "
    "4 adapter/backbone mismatch, 70 internal error (a bug), 130 interrupted. Add --debug "
    "before the command for a traceback."
)


class CLIError(FewclipError):
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
    from fewclip._io import atomic_write

    atomic_write(path, text)


DEVICE_HELP = "Where the model runs: cpu, cuda, cuda:1, ..."
PRECISION_HELP = "amp (float16 autocast on a GPU, float32 on the CPU), fp32, fp16 or bf16."
PRECISIONS = ("amp", "fp32", "fp16", "bf16")


def check_precision(value: str) -> str:
    """Typer callback of ``--precision``: one of :data:`PRECISIONS` (exit code 2 otherwise)."""
    if value not in PRECISIONS:
        raise typer.BadParameter(f"expected one of {', '.join(PRECISIONS)}, found {value!r}")
    return value


def check_device(value: str) -> str:
    """Typer callback of ``--device``: ``cpu``, ``mps``, ``cuda`` or ``cuda:N``, and a CUDA
    device must be one torch can use on this machine (exit code 2 otherwise)."""
    import re

    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", value):
        raise typer.BadParameter(f"expected cpu, cuda or cuda:N, found {value!r}")
    if value.startswith("cuda"):  # only then import torch: `--device cpu` stays fast
        from fewclip._device import resolve_device
        from fewclip.errors import InvalidValueError

        try:
            resolve_device(value)
        except InvalidValueError as e:
            raise typer.BadParameter(str(e).removeprefix("device: ")) from None
    return value


DEVICE_OPTION: Any = typer.Option("cpu", help=DEVICE_HELP, callback=check_device)
PRECISION_OPTION: Any = typer.Option("amp", help=PRECISION_HELP, callback=check_precision)
QUIET_HELP = "Print only the result: no notes, no progress bars."
EXECUTOR_HELP = (
    "Where the work runs: local (this process; the default) or ray (a pool of Ray actors; "
    "needs the ray extra and a --store every worker can read)."
)
RAY_ADDRESS_HELP = (
    "Ray cluster to join: auto (the cluster this machine belongs to) or ray://HOST:10001; "
    "default with --executor ray: start a local Ray here."
)
RAY_WORKERS_HELP = (
    "Ray actors (default: one per GPU for GPU work, else one per CPU of the cluster)."
)


def check_executor(value: str) -> str:
    """Typer callback of ``--executor``: ``local`` or ``ray`` (exit code 2 otherwise)."""
    if value not in ("local", "ray"):
        raise typer.BadParameter(f"expected local or ray, found {value!r}")
    return value


EXECUTOR_OPTION: Any = typer.Option("local", help=EXECUTOR_HELP, callback=check_executor)
RAY_ADDRESS_OPTION: Any = typer.Option(None, "--ray-address", help=RAY_ADDRESS_HELP)
RAY_WORKERS_OPTION: Any = typer.Option(None, "--ray-workers", min=1, help=RAY_WORKERS_HELP)


def cli_executor(
    executor: str, ray_address: str | None, ray_workers: int | None, jobs: int = 1
) -> Any:
    """The executor the options name; Ray options without ``--executor ray`` and ``--jobs``
    with it are usage errors (exit code 2)."""
    from fewclip.executors import make_executor

    if executor == "local":
        given = [
            f for f, v in (("--ray-address", ray_address), ("--ray-workers", ray_workers)) if v
        ]
        if given:
            raise CLIError(f"{' and '.join(given)}: needs --executor ray", EXIT_USAGE)
        return make_executor("local", jobs=jobs)
    if jobs != 1:
        raise CLIError(
            "--jobs: with --executor ray the cells run on Ray actors; set their number with "
            "--ray-workers",
            EXIT_USAGE,
        )
    return make_executor("ray", address=ray_address, workers=ray_workers)


JSON_HELP = "Print the result as JSON on stdout (accuracies in percent, as in the text)."
BATCH_HELP = "Images per model call."
WORKERS_HELP = "Worker processes that decode images (0: decode in the main process)."
PROMPTS_HELP = (
    "Prompt set: default (the references' choice), single, imagenet-7, openai-80, or a file "
    "(.txt templates with {} / .json class -> sentences)."
)
VIEWS_HELP = "Augmented views of each training image (the cache's training-time variety)."
PRETRAINED_HELP = "open_clip weights: a tag (openai, laion2b_s34b_b79k) or a local checkpoint."

SKIP_BAD_HELP = (
    "Skip images that cannot be decoded (broken, truncated, empty files) instead of stopping; "
    "every skipped file is listed with its reason in the output and in the records."
)


def in_percent(report: dict[str, Any]) -> dict[str, Any]:
    """A ``classification_report`` with every accuracy in percent (as the text output shows
    them), rounded to 4 decimals, and ``"units": "percent"``."""
    out: dict[str, Any] = {}
    for key, value in report.items():
        if key == "per_class":
            out[key] = [
                {**row, "accuracy": None if row["accuracy"] is None else _pct(row["accuracy"])}
                for row in value
            ]
        elif (key.startswith("top") or key == "macro") and isinstance(value, float):
            out[key] = _pct(value)
        else:
            out[key] = value
    out["units"] = "percent"
    return out


def _pct(x: float) -> float:
    return round(100.0 * x, 4)


def report_skipped(records: Sequence[dict[str, Any]], *, quiet: bool = False) -> None:
    """Print every skipped image (``{"path", "reason"[, "split"]}``) on stderr, one per line."""
    if not records:
        return
    echo(f"skipped {len(records)} image(s) that could not be decoded:", quiet=quiet, err=True)
    for r in records:
        where = f"[{r['split']}] " if r.get("split") else ""
        echo(f"  {where}{r['path']}: {r['reason']}", quiet=quiet, err=True)


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


#: The backbone the commands use when -b is not given, but only if its weights are local.
DEFAULT_BACKBONE = "RN50"


def default_backbone(pretrained: str | None, *, quiet: bool = False) -> str:
    """The backbone for a command run without ``-b``: ``RN50`` when its weights are on this
    machine (or ``--pretrained`` names a file), never one that needs a download; otherwise a
    usage error (exit 2) listing the models that load here."""
    import fewclip.backbones as fb

    local = fb.local_backbones()
    if DEFAULT_BACKBONE in local or (pretrained and Path(pretrained).expanduser().is_file()):
        echo(
            f"using -b {DEFAULT_BACKBONE} (no -b given; its weights are local)",
            quiet=quiet,
            err=True,
        )
        return DEFAULT_BACKBONE
    real = [n for n in local if not n.startswith("fewclip-tiny")]
    have = (
        f"Models whose weights are on this machine: {', '.join(real)}; "
        if real
        else "No real CLIP weights are on this machine; "
    )
    raise typer.BadParameter(
        "no backbone given and the default RN50 is not on this machine (fewclip does not "
        f"download one unasked). {have}"
        "-b fewclip-tiny-vit runs offline but is an untrained toy. Give a model with "
        "-b ViT-B/16 (downloads once where there is internet), -b local-dir:PATH (a local "
        "open_clip folder) or -b RN50 --pretrained FILE (a local checkpoint).",
        param_hint="'--backbone' / '-b'",
    )


#: A file in a ``local-dir:`` backbone folder that marks it as toy weights (the demo writes
#: one); its first line says what the weights are.
TOY_MARKER = "TOY_BACKBONE.txt"


def toy_backbone(name: str) -> str | None:
    """What makes the backbone ``name`` a toy (``fewclip-tiny-*``: random weights; a
    ``local-dir:`` folder holding :data:`TOY_MARKER`: its first line), or None."""
    if name.startswith("fewclip-tiny"):
        return "random, untrained weights"
    if name.startswith("local-dir:"):
        marker = Path(name.removeprefix("local-dir:")) / TOY_MARKER
        if marker.is_file():
            return (marker.read_text(encoding="utf-8").splitlines() or ["toy weights"])[0]
    return None


def load_backbone(
    name: str | None, pretrained: str | None, device: str, precision: str, *, quiet: bool = False
) -> Backbone:
    import fewclip.backbones as fb

    if name is None:
        name = default_backbone(pretrained, quiet=quiet)
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
    from fewclip.errors import FewclipError, UnknownNameError

    # Exception classes of modules that were never imported cannot have been raised: look them
    # up only when loaded, so that `fewclip --help` does not import torch to classify its exit.
    def loaded(module: str, *names: str) -> tuple[type[BaseException], ...]:
        mod = sys.modules.get(module)
        return tuple(getattr(mod, n) for n in names) if mod is not None else ()

    BackboneMismatchError = loaded("fewclip.adapter", "BackboneMismatchError")
    WeightsNotFoundError = loaded("fewclip.backbones.base", "WeightsNotFoundError")

    if isinstance(exc, typer.Exit):
        if not isinstance(exc.__cause__, KeyboardInterrupt):
            return int(exc.exit_code)
        exc = exc.__cause__  # typer turns Ctrl-C into Exit(130): say what was kept
    show = getattr(exc, "show", None)
    if isinstance(exc, typer.TyperException) and callable(show):
        show()  # usage errors: click's own message and exit code 2
        return int(getattr(exc, "exit_code", EXIT_USAGE))
    if isinstance(exc, (KeyboardInterrupt, typer.Abort)):
        said = str(exc).strip()
        typer.echo(f"interrupted: {said}" if said else "interrupted", err=True)
        return EXIT_INTERRUPTED
    if debug:
        import traceback

        traceback.print_exception(type(exc), exc, exc.__traceback__)
    if isinstance(exc, CLIError):
        code = exc.code
    elif isinstance(exc, UnknownNameError):
        code = EXIT_USAGE  # a mistyped method, backbone, dataset or preset name
    elif isinstance(exc, WeightsNotFoundError):
        code = EXIT_WEIGHTS
    elif isinstance(exc, BackboneMismatchError):
        code = EXIT_MISMATCH
    elif isinstance(exc, (FewclipError, OSError)):
        code = EXIT_ERROR  # deliberate errors, and the system's (permissions, disk full, ...)
    else:
        if not debug:
            typer.echo(
                f"fewclip: internal error, a bug: {type(exc).__name__}: {exc}. Please report it; "
                "run the command again with --debug before it for the traceback "
                "(fewclip --debug COMMAND ...).",
                err=True,
            )
        else:
            typer.echo(
                f"fewclip: internal error ({type(exc).__name__}); please report it", err=True
            )
        return EXIT_BUG
    for_cli = getattr(exc, "for_cli", None)
    if callable(for_cli):  # the message with CLI options instead of Python arguments
        msg = str(for_cli())
    else:
        msg = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    msg = " ".join(msg.split()) if "\n" not in msg.strip() else msg.strip()
    typer.echo(f"error: {msg}", err=True)
    return code


def stderr_is_tty() -> bool:
    return sys.stderr.isatty()
