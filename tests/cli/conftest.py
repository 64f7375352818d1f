"""Helpers for running the installed ``fewclip`` console script as a user would."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def fewclip_exe() -> str:
    """The ``fewclip`` console script installed beside this interpreter (the package must be
    installed, as ``make test`` does; a missing script is a failure, not a skip)."""
    beside = Path(sys.executable).parent / "fewclip"
    exe = str(beside) if beside.is_file() else shutil.which("fewclip")
    if exe is None:
        pytest.fail("the `fewclip` console script is not installed: run `pip install -e .`")
    return exe


def run_fewclip(
    *args: str | os.PathLike[str],
    store: Path,
    timeout: float = 300,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``fewclip ARGS`` in a fresh process with its own feature store and no network."""
    full_env = dict(os.environ)
    full_env.update(
        {
            "FEWCLIP_STORE": str(store),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            **(env or {}),
        }
    )
    return subprocess.run(
        [fewclip_exe(), *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=cwd,
    )
