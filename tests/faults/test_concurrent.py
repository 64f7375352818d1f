"""Two `fewclip` processes started at once on the same targets: `fit -o`, `bench -o` and
`extract` into one store. Whatever the interleaving, each ends with exit 0 or one clear error
line (never a traceback), and what is on disk afterwards is whole and equals a single run's."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

import fewclip
from fewclip.features import FeatureStore
from fewclip.testing.cli import fewclip_exe
from fewclip.testing.images import make_shapes_dataset

TINY = ("-b", "fewclip-tiny-vit")


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes_dataset(
        tmp_path_factory.mktemp("twice") / "photos",
        classes=("red_circle", "blue_square"),
        per_class={"train": 6, "test": 2},
        size=24,
    )


def twice(*args: object, store: Path) -> list[subprocess.CompletedProcess[str]]:
    """Start the same command twice at once; wait for both."""
    env = {**os.environ, "FEWCLIP_STORE": str(store), "HF_HUB_OFFLINE": "1"}
    cmd = [fewclip_exe(), *map(str, args)]
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        out.append(subprocess.CompletedProcess(cmd, p.returncode, stdout, stderr))
    return out


def outcome(results: list[subprocess.CompletedProcess[str]]) -> str:
    for r in results:
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
        if "Traceback" in r.stderr or r.returncode not in (0, 1):
            return "traceback"
        if r.returncode == 1 and len(errors) != 1:
            return "traceback"
    return "correct"


@pytest.mark.parametrize("overwrite", [False, True], ids=["new-folder", "overwrite"])
def test_two_fits_into_one_folder(photos: Path, tmp_path: Path, overwrite: bool, fault_record):
    out = tmp_path / "adapter"
    flag = ("--overwrite",) if overwrite else ()
    fit = ("fit", "-m", "tip-adapter", "-d", photos, *TINY, "-k", "2", "--views", "0", "-q")
    results = twice(*fit, "-o", out, *flag, store=tmp_path / "store")
    got = outcome(results)
    fault_record.add("two at once, fit -o", got)
    assert got == "correct", [r.stderr for r in results]
    assert any(r.returncode == 0 for r in results)
    assert fewclip.Adapter.load(out).method.name == "tip-adapter"  # whole, valid
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    for r in results:
        if r.returncode == 1:
            assert "--overwrite" in r.stderr


def test_two_benches_into_one_folder(photos: Path, tmp_path: Path, fault_record) -> None:
    cfg = tmp_path / "grid.yaml"
    cfg.write_text(
        f"datasets: [{photos}]\nmethods: [zero-shot, tip-adapter]\nshots: [1, 2]\n"
        "seeds: [1]\nbackbones: [fewclip-tiny-vit]\nviews: 1\n"
    )
    out = tmp_path / "out"
    results = twice("bench", cfg, "-o", out, "-q", store=tmp_path / "store")
    got = outcome(results)
    fault_record.add("two at once, bench -o", got)
    assert got == "correct", [r.stderr for r in results]
    lines = (out / "results.jsonl").read_text().splitlines()
    hashes = [json.loads(x)["hash"] for x in lines]
    assert len(hashes) == 4
    assert len(set(hashes)) == 4
    for r in results:
        if r.returncode == 1:
            assert "another fewclip" in r.stderr


def test_two_extractions_into_one_store(photos: Path, tmp_path: Path, fault_record) -> None:
    args = ("extract", "-d", photos, *TINY, "--views", "2", "-q")
    results = twice(*args, store=tmp_path / "store")
    clean = tmp_path / "clean"
    assert (
        subprocess.run(
            [fewclip_exe(), *map(str, args)],
            env={**os.environ, "FEWCLIP_STORE": str(clean), "HF_HUB_OFFLINE": "1"},
            capture_output=True,
        ).returncode
        == 0
    )
    a, b = FeatureStore(tmp_path / "store"), FeatureStore(clean)
    same = a.keys() == b.keys() and all(
        torch.equal(a.load(k), b.load(k))
        for k in a.keys()  # noqa: SIM118 (a method)
    )
    got = outcome(results) if same else "silent"
    fault_record.add("two at once, extract", got)
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    assert same
