"""`fewclip demo` options through the installed command: --seeds, --methods and
--paper-schedules (on random tiny weights, one shot, one view: a few seconds)."""

from __future__ import annotations

import json
from pathlib import Path

from fewclip.cli.run_cmds import DEMO_PARAMS

from .conftest import run_fewclip


def test_seeds_methods_and_paper_schedules(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    res = run_fewclip(
        "demo", "--out", out, "--shots", "1", "--seeds", "1,2", "--methods",
        "zero-shot,clip-adapter", "--paper-schedules", "--warmup-steps", "0", "--views", "1",
        "--world", "none", store=tmp_path / "store",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "running 4 cells: 2 methods x shots [1] x seeds [1, 2]" in res.stderr
    rows = [json.loads(ln) for ln in (out / "results.jsonl").read_text().splitlines()]
    # --methods and --seeds: exactly these methods at exactly these seeds
    assert sorted((r["method"], r["seed"]) for r in rows) == [
        ("clip-adapter", 1),
        ("clip-adapter", 2),
        ("zero-shot", 1),
        ("zero-shot", 2),
    ]
    # --paper-schedules: CLIP-Adapter trains for the paper's epochs, not the demo's short ones
    assert "demo schedules (shorter than the papers')" not in res.stderr
    short = DEMO_PARAMS["clip-adapter"]["epochs"]
    for r in rows:
        assert r["cell"]["params"] == {}
        if r["method"] == "clip-adapter":
            assert r["params"]["epochs"] > short
    table = res.stdout
    assert "clip-adapter" in table
    assert "zero-shot" in table
    assert "tip-adapter" not in table
    # --world none: no feature-level part
    assert "Feature level" not in table
    assert not list(out.glob("world-*"))


def test_world_picks_the_calibrated_preset_and_coop_is_left_out(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    res = run_fewclip(
        "demo", "--out", out, "--shots", "1", "--seeds", "3", "--methods", "zero-shot,coop",
        "--warmup-steps", "0", "--views", "1", "--world", "eurosat",
        store=tmp_path / "store",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "Feature level: synthetic features calibrated to CLIP RN50 on eurosat (10 classes" in (
        res.stdout
    )
    assert "left out (need a text encoder): coop" in res.stderr
    lines = (out / "world-eurosat" / "results.jsonl").read_text().splitlines()
    rows = [json.loads(ln) for ln in lines]
    assert [(r["method"], r["shots"], r["seed"], r["dataset"]) for r in rows] == [
        ("zero-shot", 1, 3, "eurosat")
    ]


def test_an_unknown_world_is_a_usage_error(tmp_path: Path) -> None:
    res = run_fewclip("demo", "--out", tmp_path / "demo", "--world", "mnist", store=tmp_path / "s")
    assert res.returncode == 2, res.stderr
    assert "no calibrated world 'mnist'; use one of caltech101" in res.stderr
    assert "--world" in res.stderr
    assert ", or none" in res.stderr
    assert not (tmp_path / "demo").exists()


def test_the_prompt_learners_run_as_bench_cells_with_the_backbone_s_text_tower(
    tmp_path: Path,
) -> None:
    """The runner hands the tiny backbone's text tower to every cell (Prepared.text_tower):
    CoCoOp, KgCoOp and ProGrad fit and are scored on the test split (CoCoOp through the tower
    per image), each with its released schedule."""
    out = tmp_path / "demo"
    res = run_fewclip(
        "demo", "--out", out, "--shots", "1", "--seeds", "1", "--methods",
        "cocoop,kgcoop,prograd", "--warmup-steps", "0", "--views", "1",
        store=tmp_path / "store",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    rows = [json.loads(ln) for ln in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["method"] for r in rows) == ["cocoop", "kgcoop", "prograd"]
    epochs = {r["method"]: r["fitted"]["epochs_"] for r in rows}
    assert epochs == {"cocoop": 10, "kgcoop": 100, "prograd": 50}  # ProGrad: 50 at 1 shot
    for r in rows:
        assert r["n_test"] == 200
        assert 0 <= r["accuracy"] <= 100
    # the feature-level part has no text encoder for them
    assert "feature-level part skipped: every method asked for needs a text encoder" in res.stderr
    assert not list(out.glob("world-*"))
