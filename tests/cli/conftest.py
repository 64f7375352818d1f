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


# Shared by the tests/cli/test_options_*.py files: one small dataset and one fitted adapter for
# the whole session, so that each option test pays only for its own command.

OPTION_CLASSES = ("red_circle", "blue_square", "green_triangle")
TINY_BACKBONE = "fewclip-tiny-vit"


@pytest.fixture(scope="session")
def opt_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes of drawn shapes, 6 train, 2 val and 4 test images each (an absolute path)."""
    from fewclip.testing.images import make_shapes_dataset

    root = tmp_path_factory.mktemp("opt-data") / "photos"
    return make_shapes_dataset(
        root, classes=OPTION_CLASSES, per_class={"train": 6, "val": 2, "test": 4}, size=32
    ).resolve()


@pytest.fixture(scope="session")
def opt_adapter(
    tmp_path_factory: pytest.TempPathFactory, opt_data: Path
) -> tuple[Path, Path, subprocess.CompletedProcess[str]]:
    """A zero-shot adapter fitted on :func:`opt_data` with the tiny backbone, 2 shots, seed 1,
    1 view, ``-q``: (adapter folder, its feature store, the finished `fewclip fit`)."""
    tmp = tmp_path_factory.mktemp("opt-adapter")
    adapter, store = tmp / "adapter", tmp / "store"
    res = run_fewclip(
        "fit", "-m", "zero-shot", "-d", opt_data, "-k", "2", "-b", TINY_BACKBONE,
        "--views", "1", "-o", adapter, "-q", store=store,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return adapter, store, res
