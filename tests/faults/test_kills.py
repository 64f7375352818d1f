"""SIGKILL of `fewclip extract`, `fewclip bench` (serial and --jobs 2) and `fewclip fit -o`
at several points, then the same command again: the result equals an uninterrupted run's,
each bench cell has exactly one row, and an adapter folder holds the old or the new adapter,
whole, at every moment."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest
import torch

import fewclip
from fewclip.features import FeatureStore
from fewclip.testing.cli import run_fewclip
from fewclip.testing.images import make_shapes_dataset

from .conftest import kill_env

TINY = ("-b", "fewclip-tiny-vit")


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes_dataset(
        tmp_path_factory.mktemp("kills") / "photos",
        classes=("red_circle", "blue_square", "green_triangle"),
        per_class={"train": 6, "test": 3},
        size=24,
    )


def _entries(store: Path) -> dict[str, torch.Tensor]:
    fs = FeatureStore(store)
    return {k: fs.load(k, mmap=False) for k in fs.keys()}  # noqa: SIM118 (a method)


@pytest.fixture(scope="module")
def clean_extract(
    photos: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, torch.Tensor]:
    store = tmp_path_factory.mktemp("clean-store")
    res = run_fewclip("extract", "-d", photos, *TINY, "--views", "3", "-q", store=store)
    assert res.returncode == 0, res.stderr
    return _entries(store)


@pytest.mark.parametrize(
    ("target", "n", "when"),
    [
        ("fewclip.features.store:EntryWriter.write_shard", 3, "after"),
        ("fewclip.features.store:EntryWriter.finalize", 2, "before"),
        ("fewclip.features.store:EntryWriter.write_partial", 1, "after"),
    ],
    ids=["after-shard-3", "before-record-2", "after-partial-1"],
)
def test_extract_killed_then_rerun_equals_a_clean_run(
    photos: Path, clean_extract, tmp_path: Path, target: str, n: int, when: str, fault_record
) -> None:
    store = tmp_path / "store"
    args = ("extract", "-d", photos, *TINY, "--views", "3", "-q")
    extra = ("--commit-seconds", "0") if "partial" in target else ()
    killed = run_fewclip(
        *args, *extra, store=store, env=kill_env(tmp_path / "hook", target, n, when)
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    res = run_fewclip(*args, store=store)
    got = _entries(store)
    ok = res.returncode == 0 and got.keys() == clean_extract.keys()
    ok = ok and all(torch.equal(got[k], clean_extract[k]) for k in got)
    fault_record.add("SIGKILL, extract", "correct" if ok else "silent")
    assert res.returncode == 0, res.stderr
    assert got.keys() == clean_extract.keys()
    for k in got:
        assert torch.equal(got[k], clean_extract[k]), k
    assert all(FeatureStore(store).verify(k) == [] for k in got)


def _bench_config(tmp: Path, photos: Path) -> Path:
    cfg = tmp / "grid.yaml"
    cfg.write_text(
        f"datasets: [{photos}]\nmethods: [zero-shot, tip-adapter, linear-probe]\n"
        "shots: [1, 2]\nseeds: [1]\nbackbones: [fewclip-tiny-vit]\nviews: 1\n"
    )
    return cfg


@pytest.fixture(scope="module")
def clean_bench(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("clean-bench")
    cfg = _bench_config(tmp, photos)
    res = run_fewclip("bench", cfg, "-o", tmp / "out", "-q", store=tmp / "store")
    assert res.returncode == 0, res.stderr
    return cfg, (tmp / "out" / "results.md").read_text()


@pytest.mark.parametrize(("n", "jobs"), [(1, "1"), (4, "2")])
def test_bench_killed_then_rerun_has_one_row_per_cell_and_the_same_table(
    clean_bench, tmp_path: Path, n: int, jobs: str, fault_record
) -> None:
    cfg, table = clean_bench
    out, store = tmp_path / "out", tmp_path / "store"
    args = ("bench", cfg, "-o", out, "--jobs", jobs, "-q")
    hook = kill_env(tmp_path / "hook", "fewclip.bench.runner:_Appender.append", n)
    killed = run_fewclip(*args, store=store, env=hook)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    rows_before = (out / "results.jsonl").read_text().splitlines()
    assert len(rows_before) == n
    res = run_fewclip(*args, store=store)
    lines = (out / "results.jsonl").read_text().splitlines()
    hashes = [json.loads(x)["hash"] for x in lines]  # every line is JSON
    ok = res.returncode == 0 and len(hashes) == len(set(hashes)) == 6
    ok = ok and lines[:n] == rows_before and (out / "results.md").read_text() == table
    fault_record.add(f"SIGKILL, bench --jobs {jobs}", "correct" if ok else "silent")
    assert res.returncode == 0, res.stderr
    assert len(hashes) == 6
    assert len(set(hashes)) == 6
    assert lines[:n] == rows_before  # finished rows are kept as they were
    assert (out / "results.md").read_text() == table


@pytest.mark.parametrize(
    ("target", "n", "when"),
    [
        ("fewclip.outputs:_umask_modes", 1, "after"),  # new adapter written aside, not swapped
        ("fewclip.outputs:_exchange", 1, "after"),  # swapped, old files not yet removed
    ],
    ids=["before-swap", "after-swap"],
)
def test_fit_killed_while_replacing_an_adapter_leaves_a_whole_one(
    photos: Path, tmp_path: Path, target: str, n: int, when: str, fault_record
) -> None:
    store, out = tmp_path / "store", tmp_path / "adapter"
    fit = ("fit", "-d", photos, *TINY, "-k", "2", "--views", "0", "-q")
    assert run_fewclip(*fit, "-m", "zero-shot", "-o", out, store=store).returncode == 0
    killed = run_fewclip(
        *fit, "-m", "tip-adapter", "-o", out, "--overwrite",
        store=store, env=kill_env(tmp_path / "hook", target, n, when),
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    method = fewclip.Adapter.load(out).method.name  # whole: it loads and validates
    assert method in ("zero-shot", "tip-adapter")
    assert sorted(p.name for p in out.iterdir()) == [
        "adapter.json",
        "config.json",
        "state.safetensors",
    ]
    # the next write (here through the library: the same write_folder) clears what the
    # killed one left beside the folder
    again = fewclip.Adapter.load(out)
    again.save(out, overwrite=True)
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(".adapter.")]
    fault_record.add("SIGKILL, fit -o --overwrite", "correct" if not left else "silent")
    assert left == []
    assert fewclip.Adapter.load(out).method.name == method
    shutil.rmtree(out)
