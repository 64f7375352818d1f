"""Ctrl-C during `fewclip extract`: it says what was kept, and the next run resumes to the same
features as an uninterrupted one."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from fewclip.features import FeatureStore
from fewclip.testing.images import make_shapes_dataset

from .conftest import fewclip_exe, run_fewclip


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes_dataset(
        tmp_path_factory.mktemp("intr") / "photos",
        classes=("red_circle", "blue_square", "green_triangle", "yellow_star"),
        per_class={"train": 150},
        size=24,
    )


def _entries(store: Path) -> dict[str, torch.Tensor]:
    fs = FeatureStore(store)
    return {k: fs.load(k, mmap=False) for k in fs.keys()}  # noqa: SIM118 (a method)


def test_sigint_during_extract_then_resume_equals_an_uninterrupted_run(
    data: Path, tmp_path: Path
) -> None:
    args = ["extract", "-d", data, "-b", "fewclip-tiny-vit", "--views", "10", "--batch-size", "1"]
    ref = run_fewclip(*args, "-q", store=tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr

    store = tmp_path / "s"
    env = {**os.environ, "FEWCLIP_STORE": str(store), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [fewclip_exe(), *map(str, args), "--commit-seconds", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while len(list(store.rglob("*.partial"))) < 11:  # every view's entry saved its rows
        assert proc.poll() is None, "extraction ended before any partial shard was saved"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted:" in err and "image-view rows are kept" in err
    assert "Run the same command again to resume" in err and "Traceback" not in err
    kept = int(err.split(" of ")[0].rsplit(" ", 1)[-1])
    assert kept > 0

    res = run_fewclip(*args, store=store)
    assert res.returncode == 0, res.stderr
    encoded = int(res.stdout.split(" images encoded")[0].rsplit(" ", 1)[-1])
    assert encoded < 600  # the kept rows were not encoded again
    got, want = _entries(store), _entries(tmp_path / "ref")
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
