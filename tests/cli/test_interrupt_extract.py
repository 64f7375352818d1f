"""Ctrl-C during `fewclip extract`: it says what was kept, and the next run resumes to the same
features as an uninterrupted one.

The interrupt never races the extraction: a ``sitecustomize`` hook in the child holds it,
mid-run, once every view has saved its partial rows, and says so through a flag file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from fewclip.features import FeatureStore
from fewclip.testing.cli import default_sigint
from fewclip.testing.images import make_shapes_dataset

from .conftest import fewclip_exe, run_fewclip

#: Holds the extraction once all 11 entries (10 views and the mean) have saved partial rows.
HOLD_AFTER_PARTIALS = """
import os
import time

from fewclip.features.store import EntryWriter

_write_partial, _saved = EntryWriter.write_partial, []


def write_partial(self, *args, **kwargs):
    _write_partial(self, *args, **kwargs)
    _saved.append(1)
    if len(_saved) == 11:
        open(os.environ["FEWCLIP_TEST_HELD"], "w").close()
        time.sleep(600)  # the test sends SIGINT here


EntryWriter.write_partial = write_partial
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes_dataset(
        tmp_path_factory.mktemp("intr") / "photos",
        classes=("red_circle", "blue_square", "green_triangle", "yellow_star"),
        per_class={"train": 30},
        size=24,
    )


def _entries(store: Path) -> dict[str, torch.Tensor]:
    fs = FeatureStore(store)
    return {k: fs.load(k, mmap=False) for k in fs.keys()}  # noqa: SIM118 (a method)


def test_sigint_during_extract_then_resume_equals_an_uninterrupted_run(
    data: Path, tmp_path: Path
) -> None:
    # --batch-size 11: one image and its 11 rows (plain + 10 views) per model call in every
    # run, so the resumed run's batches are the reference's and the features equal bit for bit
    args = ["extract", "-d", data, "-b", "fewclip-tiny-vit", "--views", "10", "--batch-size", "11"]
    ref = run_fewclip(*args, "-q", store=tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr

    store = tmp_path / "s"
    hook, held = tmp_path / "hook", tmp_path / "held"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOLD_AFTER_PARTIALS)
    env = {
        **os.environ,
        "FEWCLIP_STORE": str(store),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(hook),
        "FEWCLIP_TEST_HELD": str(held),
    }
    proc = subprocess.Popen(
        [fewclip_exe(), *map(str, args), "--commit-seconds", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    deadline = time.monotonic() + 120
    while not held.exists():
        assert proc.poll() is None, "extraction ended before every view saved partial rows"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert len(list(store.rglob("*.partial"))) == 11
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted:" in err
    assert "image-view rows are kept" in err
    assert "Run the same command again to resume" in err
    assert "Traceback" not in err
    kept = int(err.split(" of ")[0].rsplit(" ", 1)[-1])
    assert kept > 0

    res = run_fewclip(*args, store=store)
    assert res.returncode == 0, res.stderr
    encoded = int(res.stdout.split(" images encoded")[0].rsplit(" ", 1)[-1])
    assert encoded < 120  # the kept rows were not encoded again
    got, want = _entries(store), _entries(tmp_path / "ref")
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
