"""`fewclip bench` under base-to-new: a whole run on synthetic worlds, hand-checked numbers, the
leak rules, resume, tables and the config keys."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from fewclip.bench import (
    BenchConfig,
    ConfigError,
    format_tables,
    load_config,
    run_bench,
    summarize,
    summary_json,
)
from fewclip.bench.synthetic import synthetic_prepare
from fewclip.functional import l2_normalize
from fewclip.generalisation import harmonic_mean

from .conftest import FAST, PROMPT_LEARNERS, PROMPT_QUICK, SHAPES

QUICK = {
    **FAST,
    "clip-adapter": {"epochs": 3},
    "coop": {"epochs": 2, "n_ctx": 4},
}


def _config(**kw):
    base = {
        "methods": ("zero-shot", "clip-adapter", "coop", "tip-adapter"),
        "datasets": ("alpha",),
        "shots": (2,),
        "seeds": (1, 2),
        "backbones": ("toy",),
        "protocol": "base-to-new",
        "params": QUICK,
    }
    base.update(kw)
    return BenchConfig(**base)


@pytest.fixture(scope="module")
def prepare():
    return synthetic_prepare(shapes=SHAPES, calibrate=False, n_views=3, text_tower=True)


@pytest.fixture(scope="module")
def rows(prepare, tmp_path_factory):
    out = tmp_path_factory.mktemp("b2n") / "r.jsonl"
    return run_bench(_config(), prepare, out, quiet=True)


def test_rows_report_base_new_and_h(rows) -> None:
    assert len(rows) == 8
    for r in rows:
        assert r["protocol"] == "base-to-new"
        assert r["validation"] == "fewshot-val"
        assert r["leaky"] is False
        base, new = r["splits"]["base"], r["splits"]["new"]
        assert base["classes"] == [0, 1, 2]
        assert new["classes"] == [3, 4]
        assert r["accuracy"] == base["accuracy"]  # the classes it was fitted on
        assert base["n"] == 36
        assert r["n_test"] == 36
        assert r["n_support"] == 6  # 2 shots x 3 base classes
        if r["method"] == "tip-adapter":
            assert new["accuracy"] is None
            assert r["harmonic"] is None
            assert "cache's one-hot labels" in new["reason"]
            assert r["not_applicable"] == new["reason"]
        else:
            assert new["n"] == 24
            assert r["not_applicable"] is None
            h = harmonic_mean(base["accuracy"], new["accuracy"])
            assert r["harmonic"] == pytest.approx(h, abs=1e-5)


def test_the_four_prompt_learners_score_the_new_classes(prepare, tmp_path, monkeypatch) -> None:
    """CoOp, CoCoOp, KgCoOp and ProGrad, fitted on the base half through the toy text tower,
    score the new half through for_classes with the new classes' names, beside the adapters."""
    from fewclip.methods.base import Method

    asked: dict[str, list[str]] = {}
    original = Method.for_classes

    def for_classes(self, classnames, text_weights, **kw):
        asked[self.name] = list(classnames)
        return original(self, classnames, text_weights, **kw)

    monkeypatch.setattr(Method, "for_classes", for_classes)
    methods = ("zero-shot", "clip-adapter", "tip-adapter", *PROMPT_LEARNERS)
    cfg = _config(methods=methods, seeds=(1,), params={**QUICK, **PROMPT_QUICK})
    rows = run_bench(cfg, prepare, tmp_path / "r.jsonl", quiet=True)
    assert [r["method"] for r in rows] == list(methods)
    for r in rows:
        if r["method"] == "tip-adapter":
            assert r["splits"]["new"]["accuracy"] is None
            continue
        base, new = r["splits"]["base"], r["splits"]["new"]
        assert r["not_applicable"] is None, r["method"]
        assert (base["classes"], new["classes"]) == ([0, 1, 2], [3, 4])
        assert (base["n"], new["n"]) == (36, 24)
        assert 0.0 <= new["accuracy"] <= 100.0
        assert r["harmonic"] == pytest.approx(harmonic_mean(base["accuracy"], new["accuracy"]))
        assert asked[r["method"]] == ["class 3", "class 4"]
    text = format_tables(summarize(rows, methods=cfg.methods))
    for method in PROMPT_LEARNERS:
        line = next(ln for ln in text.splitlines() if ln.startswith(method + " "))
        assert "n/a" not in line


def test_a_model_still_scoring_the_base_classes_is_an_error(prepare, tmp_path, monkeypatch):
    """The CoCoOp bug class: a for_classes that hands back the base model (3 columns) for the
    2 new classes. The new split's labels (0, 1) fit inside 3 columns, so without the class
    count the cell would report a plausible accuracy; it must fail and name the counts."""
    from fewclip.methods import get

    monkeypatch.setattr(get("clip-adapter"), "for_classes", lambda self, *a, **kw: self)
    cfg = _config(methods=("clip-adapter",), seeds=(1,))
    with pytest.raises(ValueError, match="the split has 2 classes but the model scores 3"):
        run_bench(cfg, prepare, tmp_path / "r.jsonl", quiet=True)


def test_zero_shot_by_hand(rows, prepare) -> None:
    """Zero-shot's base accuracy is the 3-way head of the base classes on their test images,
    its new accuracy the 2-way head of the new classes on theirs."""
    p = prepare("alpha", "toy")
    test = p.source.features("test")
    x, y = l2_normalize(test.features), test.labels
    got = {}
    for split, classes in (("base", [0, 1, 2]), ("new", [3, 4])):
        keep = torch.isin(y, torch.tensor(classes))
        pred = (x[keep] @ p.text_weights[classes].T).argmax(1)
        truth = torch.tensor([classes.index(int(v)) for v in y[keep]])
        got[split] = 100 * float((pred == truth).float().mean())
    (zs,) = [r for r in rows if r["method"] == "zero-shot" and r["seed"] == 1]
    assert zs["splits"]["base"]["accuracy"] == pytest.approx(got["base"], abs=1e-4)
    assert zs["splits"]["new"]["accuracy"] == pytest.approx(got["new"], abs=1e-4)


class _Recording:
    """A feature source that logs every features() request as (split, rows)."""

    def __init__(self, source) -> None:
        self._source = source
        self.log: list[tuple[str, tuple[int, ...] | None]] = []

    def splits(self):
        return self._source.splits()

    def labels(self, split):
        return self._source.labels(split)

    def features(self, split, index=None, *, views=False):
        self.log.append((split, None if index is None else tuple(int(i) for i in index)))
        return self._source.features(split, index, views=views)


def test_selection_never_sees_test_or_new_class_data(prepare, tmp_path, monkeypatch) -> None:
    """While a method fits (and searches on validation), nothing of the test split and no row
    or name of a new class has been read; the task holds the base classes only. New-class rows
    are read afterwards, by the evaluation."""
    from fewclip.methods.base import Method

    inner = prepare("alpha", "toy")
    fitted: list[dict] = []
    original = Method.fit
    recorders: list[_Recording] = []

    def fit(self, task):
        fitted.append(
            {
                "method": self.name,
                "reads": list(recorders[-1].log),
                "classnames": list(task.classnames),
                "weights": task.text_weights.clone(),
                "val": None if task.val is None else task.val.labels.clone(),
            }
        )
        return original(self, task)

    monkeypatch.setattr(Method, "fit", fit)
    for method in ("zero-shot", "tip-adapter", "linear-probe"):  # one cell, one fresh log
        recorders.append(_Recording(inner.source))
        run_bench(
            _config(methods=(method,), seeds=(1,)),
            lambda d, b: dataclasses.replace(inner, source=recorders[-1]),
            tmp_path / f"{method}.jsonl",
            quiet=True,
        )
    assert [f["method"] for f in fitted] == ["zero-shot", "tip-adapter", "linear-probe"]
    train = inner.source.labels("train").tolist()
    test = inner.source.labels("test").tolist()
    for f, recorder in zip(fitted, recorders, strict=True):
        assert f["classnames"] == ["class 0", "class 1", "class 2"]
        assert torch.equal(f["weights"], inner.text_weights[:3])
        assert f["reads"], "the support set was read"
        for split, index in f["reads"]:
            assert split == "train", f"{f['method']}: read {split} before fitting"
            assert index is not None
            assert {train[i] for i in index} <= {0, 1, 2}, f"{f['method']}: a new-class row"
        if f["method"] != "zero-shot":  # the searching methods validate on base classes
            assert f["val"] is not None
            assert set(f["val"].tolist()) == {0, 1, 2}
        # after fitting, the evaluation read the base test rows, and for a method that can
        # score new classes the new ones, each set on its own (never the whole split)
        after = recorder.log[len(f["reads"]) :]
        assert all(s == "test" and ix is not None for s, ix in after)
        seen = [{test[i] for i in ix or ()} for _, ix in after]
        assert seen == ([{0, 1, 2}, {3, 4}] if f["method"] == "zero-shot" else [{0, 1, 2}])


def test_support_is_the_standard_draw_of_the_base_classes(prepare, tmp_path) -> None:
    """The base half fits on the rows the standard protocol draws, minus the new classes (the
    reference subsamples classes after its few-shot split files are drawn)."""
    inner = prepare("alpha", "toy")
    logs = {}
    for protocol in ("fewshot-val", "base-to-new"):
        recorder = _Recording(inner.source)
        run_bench(
            _config(methods=("tip-adapter",), seeds=(1,), protocol=protocol, shots=(3,)),
            lambda d, b, r=recorder: dataclasses.replace(inner, source=r),
            tmp_path / f"{protocol}.jsonl",
            quiet=True,
        )
        logs[protocol] = [(s, ix) for s, ix in recorder.log if s == "train"]
    labels = inner.source.labels("train").tolist()
    (std_support, std_val), (b2n_support, b2n_val) = logs["fewshot-val"], logs["base-to-new"]
    assert b2n_support[1] == tuple(i for i in std_support[1] if labels[i] < 3)
    assert b2n_val[1] == tuple(i for i in std_val[1] if labels[i] < 3)


def test_resume_runs_nothing_twice(prepare, tmp_path, fit_counter) -> None:
    out = tmp_path / "r.jsonl"
    cfg = _config(methods=("zero-shot", "tip-adapter"))
    first = run_bench(cfg, prepare, out, quiet=True)
    n = len(fit_counter.calls)
    assert n == 4
    again = run_bench(cfg, prepare, out, quiet=True)
    assert len(fit_counter.calls) == n
    assert [r["hash"] for r in again] == [r["hash"] for r in first]
    assert again[0]["splits"] == first[0]["splits"]
    # another validation protocol is another cell
    other = _config(methods=("zero-shot",), protocol_options={"validation": "val-free"})
    run_bench(other, prepare, out, quiet=True)
    assert len(fit_counter.calls) == n + 2


def test_tables_show_base_new_h_and_the_reason(rows) -> None:
    summary = summarize(rows, methods=_config().methods)
    assert summary.groups == []  # no accuracy-vs-shots table for a generalisation protocol
    (group,) = summary.generalisation
    assert (group.protocol, group.validation) == ("base-to-new", "fewshot-val")
    (table,) = group.tables  # one dataset: no average
    assert table.columns == ["base", "new", "H"]
    assert table.methods == ["zero-shot", "clip-adapter", "coop", "tip-adapter"]
    zs = table.cells["zero-shot"]
    assert zs["H"].stat is not None
    assert zs["base"].stat is not None
    assert zs["new"].stat
    assert zs["H"].stat.mean == pytest.approx(
        harmonic_mean(zs["base"].stat.mean, zs["new"].stat.mean)
    )
    assert table.cells["tip-adapter"]["new"].stat is None
    text = format_tables(summary)
    assert "protocol base-to-new (validation fewshot-val)" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("tip-adapter"))
    assert line.count("n/a [1]") == 2
    assert "[1] n/a: tip-adapter cannot score classes it was not fitted on" in text
    md = format_tables(summary, "markdown")
    assert "| method | base | new | H |" in md
    js = summary_json(summary)
    (gg,) = js["generalisation"]
    assert gg["tables"][0]["columns"] == ["base", "new", "H"]
    assert gg["tables"][0]["cells"]["tip-adapter"]["new"]["stat"] is None
    json.dumps(js, allow_nan=False)


def test_the_average_table_and_the_papers_rows() -> None:
    """An average over datasets averages base and new and takes H of the averages; the papers'
    rows appear under it only for the 11 datasets with ViT-B/16 at 16 shots."""
    from fewclip.generalisation import CROSS_DATASET_TARGETS

    def row(dataset, method, seed, base, new, backbone="ViT-B/16"):
        return {
            "hash": f"{dataset}/{method}/{seed}/{backbone}",
            "method": method,
            "dataset": dataset,
            "backbone": backbone,
            "shots": 16,
            "seed": seed,
            "protocol": "base-to-new",
            "validation": "fewshot-val",
            "accuracy": base,
            "splits": {"base": {"accuracy": base}, "new": {"accuracy": new}},
            "not_applicable": None if new is not None else "no new classes here",
        }

    eleven = ["imagenet", *CROSS_DATASET_TARGETS]
    rows = [row(d, "zero-shot", 1, 70.0 + i, 74.0) for i, d in enumerate(eleven)]
    rows += [row(d, "tip-adapter", 1, 80.0, None) for d in eleven]
    summary = summarize(rows, methods=["zero-shot", "tip-adapter"])
    (group,) = summary.generalisation
    avg = group.tables[-1]
    assert avg.dataset == "average"
    assert avg.datasets == eleven
    base = avg.cells["zero-shot"]["base"].stat
    assert base is not None
    assert base.mean == pytest.approx(75.0)
    h = avg.cells["zero-shot"]["H"].stat
    assert h is not None
    assert h.mean == pytest.approx(2 * 75 * 74 / 149)
    assert avg.cells["tip-adapter"]["new"].reason == "no new classes here"
    text = format_tables(summary)
    assert "CLIP (CoCoOp T1)" in text
    assert "69.34" in text
    assert "82.69" in text
    assert "(CoCoOp T1): CoCoOp (Zhou et al., CVPR 2022), Table 1" in text
    assert "KgCoOp (KgCoOp T1)" in text
    assert "80.73" in text
    # not over 10 datasets, not with another backbone
    assert "CoCoOp T1" not in format_tables(summarize(rows[1:11] + rows[12:]))
    other = [{**r, "backbone": "RN50", "hash": r["hash"] + "rn"} for r in rows]
    assert "CoCoOp T1" not in format_tables(summarize(other))


# -- the config ------------------------------------------------------------------------------
def test_config_defaults_and_checks() -> None:
    cfg = BenchConfig(protocol="base-to-new")
    assert cfg.shots == (16,)  # the papers' setting when shots are not given
    assert cfg.protocol_options == {"validation": "fewshot-val"}
    assert BenchConfig().shots == (1, 2, 4, 8, 16)
    assert BenchConfig(protocol="base-to-new", shots=(4,)).shots == (4,)
    with pytest.raises(ConfigError, match="never select on test images"):
        BenchConfig(protocol="base-to-new", protocol_options={"validation": "oracle-test"})
    with pytest.raises(ConfigError, match="unknown option.*targets"):
        BenchConfig(protocol="base-to-new", protocol_options={"targets": ["dtd"]})
    with pytest.raises(ConfigError, match="validation only under a generalisation protocol"):
        BenchConfig(protocol="fewshot-val", protocol_options={"validation": "val-free"})
    with pytest.raises(ConfigError, match="base-to-new"):
        BenchConfig(protocol="base-to-old")
    via = load_config(None, ["protocol=base-to-new", "protocol_options.validation=coop-val"])
    assert via.protocol_options == {"validation": "coop-val"}
    assert BenchConfig.from_dict(via.to_dict()) == via


def test_preset_reproduces_cocoop_table_1_layout() -> None:
    cfg = load_config("cocoop-base-to-new")
    assert cfg.protocol == "base-to-new"
    assert len(cfg.datasets) == 11
    assert cfg.shots == (16,)
    assert cfg.seeds == (1, 2, 3)
    assert cfg.backbones == ("ViT-B/16",)
    assert cfg.method_params("coop", "imagenet")["epochs"] == 50
    assert cfg.method_params("coop", "dtd") == {"ctx_init": "a photo of a", "epochs": 200}
    # the four prompt learners beside the adapters, all of which can run base-to-new
    assert set(PROMPT_LEARNERS) <= set(cfg.methods)
    assert {"zero-shot", "clip-adapter", "tip-adapter"} <= set(cfg.methods)
    assert cfg.method_params("cocoop", "dtd") == {}  # the paper's config is the default
    assert cfg.method_params("kgcoop", "dtd") == {}
    assert cfg.method_params("prograd", "imagenet") == {"epochs": 50}


def test_parallel_cells_give_the_serial_rows(rows, prepare, tmp_path) -> None:
    """Forked workers (``jobs=2``) run the same base-to-new cells to the same numbers."""
    cfg = _config(methods=("zero-shot", "tip-adapter"), seeds=(1,))
    par = run_bench(cfg, prepare, tmp_path / "r.jsonl", quiet=True, jobs=2)
    serial = {(r["method"], r["seed"]): r for r in rows}
    for r in par:
        assert r["jobs"] == 2
        assert r["splits"] == serial[(r["method"], r["seed"])]["splits"]
