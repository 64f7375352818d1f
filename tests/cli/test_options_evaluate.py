"""`fewclip evaluate` options through the installed command: --split, --prompts, --device and
--precision (a method fitted on the fly; --per-class and --json checked on the way)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import OPTION_CLASSES, TINY_BACKBONE, run_fewclip


def test_split_and_prompts_decide_what_is_scored(opt_data: Path, tmp_path: Path) -> None:
    """One identical sentence for every class makes every class's zero-shot weights equal:
    every image then gets the same class, which scores exactly 1/3 on a balanced split. The
    val split (--split val) holds 2 images a class, the test split 4."""
    same = tmp_path / "same.json"
    same.write_text(json.dumps({c.replace("_", " "): "a drawing." for c in OPTION_CLASSES}))
    res = run_fewclip(
        "evaluate", "-m", "zero-shot", "-d", opt_data, "-k", "1", "-b", TINY_BACKBONE,
        "--views", "0", "--split", "val", "--prompts", same, "--device", "cpu",
        "--precision", "fp32", "--per-class", "--json", store=tmp_path / "store",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    rep = json.loads(res.stdout)
    assert rep["split"] == "val"
    assert rep["n"] == 2 * len(OPTION_CLASSES)
    assert rep["params"]["device"] == "cpu"
    assert rep["top1"] == pytest.approx(100 / 3, abs=1e-3)
    assert sorted(row["accuracy"] for row in rep["per_class"]) == [0.0, 0.0, 100.0]
    assert [row["n"] for row in rep["per_class"]] == [2, 2, 2]
