"""Run the installed ``fewclip`` console script in a fresh process, as a user would (used by
the command-line and fault-injection tests)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from fewclip.errors import MissingFileError

__all__ = ["fewclip_exe", "run_fewclip"]


def default_sigint() -> None:
    """``preexec_fn`` for a child a test interrupts with SIGINT: Ctrl-C's default action, even
    when the test runs in the background of a shell without job control (which starts it, and
    so its children, with SIGINT ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def fewclip_exe() -> str:
    """The ``fewclip`` console script installed beside this interpreter (or on ``PATH``);
    ``MissingFileError`` when the package is not installed (``make test`` installs it)."""
    beside = Path(sys.executable).parent / "fewclip"
    exe = str(beside) if beside.is_file() else shutil.which("fewclip")
    if exe is None:
        raise MissingFileError(
            "the `fewclip` console script is not installed: run `pip install -e .`"
        )
    return exe


def run_fewclip(
    *args: str | os.PathLike[str],
    store: Path,
    timeout: float = 300,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    offline: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run ``fewclip ARGS`` in a fresh process with its own feature store and, unless
    ``offline=False`` (Hugging Face offline variables removed), in offline mode."""
    full_env = dict(os.environ)
    full_env["FEWCLIP_STORE"] = str(store)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if offline:
            full_env[var] = "1"
        else:
            full_env.pop(var, None)
    full_env.update(env or {})
    return subprocess.run(
        [fewclip_exe(), *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=cwd,
    )
