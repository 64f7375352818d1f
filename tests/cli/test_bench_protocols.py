"""`fewclip bench --protocol base-to-new` through the installed command, on a generated
three-class folder dataset with the tiny backbone."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import TINY_BACKBONE, run_fewclip


def _rows(out: Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(ln) for ln in (out / "results.jsonl").read_text().splitlines()]


def test_base_to_new_from_the_command_line(opt_data: Path, tmp_path: Path) -> None:
    out, store = tmp_path / "out", tmp_path / "store"
    args = [
        "bench", f"datasets={opt_data}", "methods=zero-shot,tip-adapter", "shots=2",
        "seeds=1", f"backbones={TINY_BACKBONE}", "views=1", "--protocol", "base-to-new",
    ]  # fmt: skip
    dry = run_fewclip(*args, "--dry-run", store=store)
    assert dry.returncode == 0, dry.stderr
    assert "protocol: base-to-new" in dry.stdout
    assert "validation: fewshot-val" in dry.stdout
    assert "# 2 cells" in dry.stdout

    res = run_fewclip(*args, "-o", out, "-q", store=store)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    # the table: base / new / H, the cache method n/a with its reason
    assert "protocol base-to-new (validation fewshot-val)" in res.stdout
    header = next(ln for ln in res.stdout.splitlines() if ln.startswith("method"))
    assert header.split() == ["method", "base", "new", "H"]
    tip = next(ln for ln in res.stdout.splitlines() if ln.startswith("tip-adapter"))
    assert tip.count("n/a [1]") == 2
    assert "cache's one-hot labels name the training classes only" in res.stdout
    rows = _rows(out)
    assert [r["method"] for r in rows] == ["zero-shot", "tip-adapter"]
    for r in rows:
        assert r["protocol"] == "base-to-new"
        assert r["validation"] == "fewshot-val"
        # three classes: the first two are base, the third new (ceil(3 / 2) = 2)
        assert r["splits"]["base"]["classes"] == [0, 1]
        assert r["splits"]["new"]["classes"] == [2]
        assert r["splits"]["base"]["n"] == 8  # 4 test images per class
        assert r["n_support"] == 4
    assert rows[0]["splits"]["new"]["n"] == 4
    assert rows[0]["harmonic"] is not None
    assert rows[1]["splits"]["new"]["accuracy"] is None
    summary = json.loads((out / "results.summary.json").read_text())
    (group,) = summary["generalisation"]
    assert group["tables"][0]["columns"] == ["base", "new", "H"]
    assert "| method | base | new | H |" in (out / "results.md").read_text()

    # resumed: nothing runs again
    again = run_fewclip(*args, "-o", out, store=store)
    assert again.returncode == 0, again.stderr
    assert "2 of 2 cells already done" in again.stderr
    assert len(_rows(out)) == 2

    # the protocol is given once
    twice = run_fewclip(*args, "protocol=val-free", "--dry-run", store=store)
    assert twice.returncode != 0
    assert "give the protocol once" in twice.stderr


def test_the_prompt_learners_on_base_to_new_from_the_command_line(
    opt_data: Path, tmp_path: Path
) -> None:
    """CoOp, CoCoOp, KgCoOp and ProGrad train on the base classes through the tiny backbone's
    text tower and score the new class from its name: every one has base, new and H."""
    out, store = tmp_path / "out", tmp_path / "store"
    learners = ["coop", "cocoop", "kgcoop", "prograd"]
    res = run_fewclip(
        "bench", f"datasets={opt_data}", "methods=" + ",".join(learners), "shots=2", "seeds=1",
        f"backbones={TINY_BACKBONE}", "views=1", "--protocol", "base-to-new",
        *(f"params.{m}.epochs=1" for m in learners), "-o", out, "-q", store=store,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    rows = _rows(out)
    assert sorted(r["method"] for r in rows) == sorted(learners)
    for r in rows:
        assert r["splits"]["base"]["classes"] == [0, 1]
        assert r["splits"]["new"]["classes"] == [2]
        assert r["splits"]["new"]["n"] == 4
        assert 0 <= r["splits"]["new"]["accuracy"] <= 100
        assert r["harmonic"] is not None
        assert r["fitted"]["epochs_"] == 1
    lines = {ln.split()[0]: ln for ln in res.stdout.splitlines() if ln.split()}
    for m in learners:
        assert "n/a" not in lines[m]
