"""`fewclip bench` options through the installed command: --keep-going, --num-workers and
--precision, on a grid whose second cell cannot be drawn (50 shots of 6 images a class)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from fewclip.features import FeatureStore

from .conftest import TINY_BACKBONE, run_fewclip


def _grid(tmp_path: Path, data: Path) -> Path:
    cfg = tmp_path / "grid.yaml"
    cfg.write_text(
        f"methods: [zero-shot]\ndatasets: [{data}]\nshots: [1, 50]\nseeds: [1]\n"
        f"backbones: [{TINY_BACKBONE}]\nviews: 1\nprotocol: val-free\n"
    )
    return cfg


def _rows(out: Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(ln) for ln in (out / "results.jsonl").read_text().splitlines()]


def test_keep_going_num_workers_precision(opt_data: Path, tmp_path: Path) -> None:
    cfg = _grid(tmp_path, opt_data)
    # without --keep-going: the failing cell stops the run; the finished one is kept
    stop, s_stop = tmp_path / "stop", tmp_path / "s-stop"
    res = run_fewclip("bench", cfg, "-o", stop, "--num-workers", "1", "-q", store=s_stop)
    assert res.returncode == 1
    assert "error:" in res.stderr
    assert "50 shots" in res.stderr
    assert "Traceback" not in res.stderr
    assert [r["shots"] for r in _rows(stop)] == [1]
    assert not (stop / "results.md").exists()

    # --keep-going: the failing cell is reported and skipped, the tables are written; fp32
    # explicitly and decoding in the main process give the same features and accuracy
    going, s_going = tmp_path / "going", tmp_path / "s-going"
    res = run_fewclip(
        "bench", cfg, "-o", going, "--keep-going", "--precision", "fp32", store=s_going
    )
    assert res.returncode == 1  # some cells failed: said, and not a success
    assert "K=50 seed=1 failed" in res.stderr
    assert "1 failed (not recorded)" in res.stderr
    assert "error: 1 cells failed" in res.stderr
    assert (going / "results.md").is_file()
    assert "zero-shot" in res.stdout
    (row,) = _rows(going)
    assert row["shots"] == 1
    assert row["accuracy"] == _rows(stop)[0]["accuracy"]
    # --precision fp32 is recorded with every feature; --num-workers 1 gave the same ones
    fs_stop, fs_going = FeatureStore(s_stop), FeatureStore(s_going)
    assert {e.record["precision"] for e in fs_going.entries()} == {"fp32"}
    assert sorted(fs_stop.keys()) == sorted(fs_going.keys())
    for key in fs_going.keys():  # noqa: SIM118 (a method)
        assert torch.equal(fs_stop.load(key, mmap=False), fs_going.load(key, mmap=False))
    assert row["data"]["precision"] == "fp32"  # recorded, and part of the data fingerprint


def test_keep_going_exit_code_does_not_depend_on_json(opt_data: Path, tmp_path: Path) -> None:
    cfg = _grid(tmp_path, opt_data)
    res = run_fewclip(
        "bench", cfg, "-o", tmp_path / "o", "--keep-going", "--json", store=tmp_path / "s"
    )
    assert res.returncode == 1, res.stderr  # a failed cell is not a success in JSON mode either
    assert "error: 1 cells failed" in res.stderr
    assert json.loads(res.stdout)["groups"]  # the summary is still printed, as valid JSON


def test_batch_seeds(opt_data: Path, tmp_path: Path) -> None:
    """Two seeds of CLIP-Adapter: one by one by default on the CPU (auto) and with
    --batch-seeds never, as one batched model with --batch-seeds always; the rows agree but for
    the record. Another value is a usage error."""
    cfg = tmp_path / "grid.yaml"
    cfg.write_text(
        f"methods: [clip-adapter]\ndatasets: [{opt_data}]\nshots: [2]\nseeds: [1, 2]\n"
        f"backbones: [{TINY_BACKBONE}]\nviews: 2\nprotocol: val-free\n"
        "params: {clip-adapter: {epochs: 3, batch_size: 2}}\n"
    )
    store = tmp_path / "store"
    rows = {}
    for name, flags in (
        ("default", []),
        ("always", ["--batch-seeds", "always"]),
        ("never", ["--batch-seeds", "never"]),
    ):
        out = tmp_path / name
        res = run_fewclip("bench", cfg, "-o", out, "-q", *flags, store=store)
        assert res.returncode == 0, res.stderr
        rows[name] = _rows(out)
    assert [r["seeds_batched"] for r in rows["default"]] == [1, 1]
    assert [r["seeds_batched"] for r in rows["always"]] == [2, 2]
    assert [r["seeds_batched"] for r in rows["never"]] == [1, 1]
    for name in ("default", "always"):
        for a, b in zip(rows[name], rows["never"], strict=True):
            assert (a["hash"], a["accuracy"], a["fitted"]) == (
                b["hash"],
                b["accuracy"],
                b["fitted"],
            )
    res = run_fewclip("bench", cfg, "-o", tmp_path / "bad", "--batch-seeds", "yes", store=store)
    assert res.returncode == 2
    assert "expected auto, always or never" in res.stderr
