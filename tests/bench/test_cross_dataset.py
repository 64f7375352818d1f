"""`fewclip bench` under cross-dataset: fit on a source, test on other datasets with their own
class names; methods that cannot name new classes are n/a there, with the reason."""

from __future__ import annotations

import pytest

from fewclip.bench import (
    BenchConfig,
    ConfigError,
    format_tables,
    load_config,
    run_bench,
    summarize,
)
from fewclip.bench.synthetic import synthetic_prepare
from fewclip.functional import l2_normalize
from fewclip.generalisation import CROSS_DATASET_TARGETS
from fewclip.testing.synthetic import DatasetShape

from .conftest import FAST, PROMPT_LEARNERS, PROMPT_QUICK, SHAPES

THREE = {**SHAPES, "gamma": DatasetShape("gamma", 3, 60, 0, 30, dim=24)}
QUICK = {**FAST, "clip-adapter": {"epochs": 3}, "coop": {"epochs": 2, "n_ctx": 4}}


def _config(**kw):
    base = {
        "methods": ("zero-shot", "clip-adapter", "coop", "tip-adapter", "linear-probe"),
        "datasets": ("alpha",),
        "shots": (2,),
        "seeds": (1, 2),
        "backbones": ("toy",),
        "protocol": "cross-dataset",
        "protocol_options": {"targets": ["beta", "gamma"]},
        "params": QUICK,
    }
    base.update(kw)
    return BenchConfig(**base)


@pytest.fixture(scope="module")
def prepare():
    return synthetic_prepare(shapes=THREE, calibrate=False, n_views=3, text_tower=True)


@pytest.fixture(scope="module")
def rows(prepare, tmp_path_factory):
    return run_bench(_config(), prepare, tmp_path_factory.mktemp("xd") / "r.jsonl", quiet=True)


def test_rows_per_target(rows) -> None:
    assert len(rows) == 10
    for r in rows:
        assert r["protocol"] == "cross-dataset"
        assert r["validation"] == "fewshot-val"
        assert r["n_test"] == 60  # the source's own test set, always reported
        assert isinstance(r["accuracy"], float)
        beta, gamma = r["targets"]["beta"], r["targets"]["gamma"]
        assert (beta["classes"], gamma["classes"]) == (4, 3)
        if r["method"] in ("tip-adapter", "linear-probe"):
            assert beta["accuracy"] is None
            assert gamma["accuracy"] is None
            assert r["target_average"] is None
            assert r["not_applicable"].startswith(f"{r['method']} cannot score classes")
            assert beta["reason"] == gamma["reason"] == r["not_applicable"]
        else:
            assert (beta["n"], gamma["n"]) == (40, 30)
            assert r["not_applicable"] is None
            assert r["target_average"] == pytest.approx((beta["accuracy"] + gamma["accuracy"]) / 2)


def test_zero_shot_on_a_target_is_the_targets_zero_shot(rows, prepare) -> None:
    """Zero-shot fitted on the source, given the target's class names and text weights, is the
    target's own zero-shot classifier."""
    target = prepare("beta", "toy")
    test = target.source.features("test")
    pred = (l2_normalize(test.features) @ target.text_weights.T).argmax(1)
    want = 100 * float((pred == test.labels).float().mean())
    for r in rows:
        if r["method"] == "zero-shot":
            assert r["targets"]["beta"]["accuracy"] == pytest.approx(want, abs=1e-4)


def test_tables_show_each_target_and_the_reasons(rows) -> None:
    summary = summarize(rows, methods=_config().methods)
    (group,) = summary.generalisation
    (table,) = group.tables
    assert table.columns == ["alpha", "beta", "gamma", "average"]
    assert table.cells["tip-adapter"]["alpha"].stat is not None
    assert table.cells["tip-adapter"]["beta"].stat is None
    assert table.cells["tip-adapter"]["average"].reason is not None
    text = format_tables(summary)
    tip = next(ln for ln in text.splitlines() if ln.startswith("tip-adapter"))
    assert tip.count("n/a [1]") == 3  # beta, gamma, average
    probe = next(ln for ln in text.splitlines() if ln.startswith("linear-probe"))
    assert probe.count("n/a [2]") == 3
    assert "[2] n/a: linear-probe cannot score classes it was not fitted on" in text
    coop = next(ln for ln in text.splitlines() if ln.startswith("coop"))
    assert "n/a" not in coop


def test_class_specific_contexts_are_not_applicable(prepare, tmp_path) -> None:
    cfg = _config(methods=("coop",), seeds=(1,), params={"coop": {"epochs": 1, "csc": True}})
    (row,) = run_bench(cfg, prepare, tmp_path / "r.jsonl", quiet=True)
    assert "class-specific contexts" in row["not_applicable"]
    assert all("class-specific" in t["reason"] for t in row["targets"].values())


def test_config_targets() -> None:
    cfg = BenchConfig(protocol="cross-dataset")
    assert cfg.protocol_options["targets"] == list(CROSS_DATASET_TARGETS)
    assert len(CROSS_DATASET_TARGETS) == 10
    assert "imagenet" not in CROSS_DATASET_TARGETS
    with pytest.raises(ConfigError, match="dtd is also a source dataset"):
        BenchConfig(protocol="cross-dataset", datasets=("imagenet", "dtd"))
    with pytest.raises(ConfigError, match="duplicate entries"):
        BenchConfig(protocol="cross-dataset", protocol_options={"targets": ["dtd", "dtd"]})
    preset = load_config("cocoop-cross-dataset")
    assert preset.datasets == ("imagenet",)
    assert preset.protocol_options["targets"] == list(CROSS_DATASET_TARGETS)
    assert preset.method_params("coop", "imagenet") == {"ctx_init": "a photo of a", "epochs": 50}
    assert set(PROMPT_LEARNERS) <= set(preset.methods)
    assert {"zero-shot", "clip-adapter", "tip-adapter"} <= set(preset.methods)


def test_the_four_prompt_learners_score_every_target(prepare, tmp_path) -> None:
    """Each prompt learner fitted on the source scores both targets with their own names."""
    cfg = _config(methods=PROMPT_LEARNERS, seeds=(1,), params=PROMPT_QUICK)
    rows = run_bench(cfg, prepare, tmp_path / "r.jsonl", quiet=True)
    assert [r["method"] for r in rows] == list(PROMPT_LEARNERS)
    for r in rows:
        assert r["not_applicable"] is None, r["method"]
        beta, gamma = r["targets"]["beta"], r["targets"]["gamma"]
        assert (beta["n"], gamma["n"]) == (40, 30)
        assert r["target_average"] == pytest.approx((beta["accuracy"] + gamma["accuracy"]) / 2)


def test_the_papers_rows_under_an_imagenet_source() -> None:
    targets = {t: {"accuracy": 60.0} for t in CROSS_DATASET_TARGETS}
    rows = [
        {
            "hash": "xd",
            "method": "coop",
            "dataset": "imagenet",
            "backbone": "ViT-B/16",
            "shots": 16,
            "seed": 1,
            "protocol": "cross-dataset",
            "validation": "fewshot-val",
            "accuracy": 71.0,
            "targets": targets,
            "target_average": 60.0,
        }
    ]
    text = format_tables(summarize(rows))
    line = next(ln for ln in text.splitlines() if ln.startswith("CoOp (CoCoOp T2, unchecked)"))
    assert line.split()[-1] == "63.88"  # the paper's average over the 10 targets
    assert "CoCoOp (CoCoOp T2, unchecked)" in text
