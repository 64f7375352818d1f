"""Helpers for running the installed ``fewclip`` console script as a user would."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from fewclip.testing.cli import fewclip_exe, run_fewclip

__all__ = ["fewclip_exe", "run_fewclip"]


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
