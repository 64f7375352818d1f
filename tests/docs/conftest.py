"""Fixtures for running the documentation's code blocks: the environment and the shell workspace.

The shell blocks of the README and the docs talk about ``my_photos/`` (a folder of your own
images, one subfolder per class) and ``new_photos/`` (images to classify). The ``shell_workspace``
fixture writes small generated stand-ins for both, so that those lines run as written.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from fewclip.testing.images import draw_shape_image, write_bad_images

#: ``my_photos/<class>`` → (what the images show, how many): uneven classes, as a real folder has.
MY_PHOTOS = {
    "cat": ("red_circle", 8),
    "dog": ("blue_square", 5),
    "bird": ("green_triangle", 3),
}
#: ``new_photos/<name>`` → what the image shows.
NEW_PHOTOS = {
    "photo_1.png": "red_circle",
    "photo_2.png": "blue_square",
    "photo_3.png": "green_triangle",
}
#: The undecodable file in ``my_photos`` (random bytes with a JPEG name).
BROKEN_FILE = "cat/broken.jpg"


def docs_environment(tmp: Path, *, with_venv_path: bool = False) -> dict[str, str]:
    """The environment a documentation block runs in: offline, one thread, a private store."""
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        FEWCLIP_STORE=str(tmp / "store"),
        MPLBACKEND="Agg",
    )
    if with_venv_path:
        # `fewclip` must resolve to the console script installed next to this interpreter.
        bin_dir = os.path.dirname(sys.executable)
        env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    return env


def write_photo_folders(root: Path, seed: int = 0) -> None:
    """Write ``root/my_photos`` (3 uneven classes of PNGs plus one broken file) and
    ``root/new_photos`` (3 unlabelled PNGs)."""
    rng = np.random.default_rng(seed)
    for label, (drawn, count) in MY_PHOTOS.items():
        folder = root / "my_photos" / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            draw_shape_image(drawn, rng, 64).save(folder / f"IMG_{i:04d}.png")
    broken = root / "my_photos" / BROKEN_FILE
    write_bad_images(broken.parent, [broken.name])
    (root / "new_photos").mkdir(parents=True, exist_ok=True)
    for name, drawn in NEW_PHOTOS.items():
        draw_shape_image(drawn, rng, 64).save(root / "new_photos" / name)


@pytest.fixture
def python_workspace(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """(an empty working directory, the environment) for a file's python blocks."""
    work = tmp_path / "work"
    work.mkdir()
    return work, docs_environment(tmp_path)


@pytest.fixture
def shell_workspace(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """(a working directory holding my_photos/ and new_photos/, the environment with the venv's
    bin directory first on PATH) for a file's shell blocks."""
    work = tmp_path / "work"
    work.mkdir()
    write_photo_folders(work)
    return work, docs_environment(tmp_path, with_venv_path=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """Show a skipped documentation block at its markdown file:line in the ``-ra`` summary
    (``SKIPPED [1] docs/performance.md:21: REASON``) instead of at the test function's line."""
    outcome = yield
    rep = outcome.get_result()
    callspec = getattr(item, "callspec", None)
    block = callspec.params.get("block") if callspec is not None else None
    if (
        rep.skipped
        and getattr(item, "originalname", None) == "test_skipped_block"
        and isinstance(rep.longrepr, tuple)
        and len(rep.longrepr) == 3
        and block is not None
    ):
        repo = Path(__file__).resolve().parents[2]
        rep.longrepr = (str(repo / block.path), block.line, rep.longrepr[2])
