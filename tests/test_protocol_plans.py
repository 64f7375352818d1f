"""What a user of the protocol module sees: the plan each protocol makes (its rows and its
record), every error word for word, and the results ``evaluate`` and ``run`` report.

The expected rows come from the reference draws in ``fewclip.sampling`` (tested against the
references' loops in ``test_sampling.py``); the expected records and messages are written out
by hand.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest
import torch
from torch import Tensor

from fewclip.protocol import (
    EvalResult,
    InMemorySource,
    Protocol,
    SplitPlan,
    SplitRef,
    TestSetAccessError,
    build_task,
    evaluate,
    no_val_message,
    plan_splits,
    run,
)
from fewclip.sampling import (
    ALL,
    NotEnoughImagesError,
    draw_all,
    sample_coop,
    sample_few_shot,
    sample_fewshot_val,
)
from fewclip.task import FeatureSet

# Uneven classes, interleaved: class 0 has 12 images, class 1 has 7, class 2 has 30.
TRAIN = [0, 1, 2] * 7 + [0, 2] * 5 + [2] * 18
VAL = [0, 1, 2] * 5 + [0, 2, 2, 2]  # 6, 5, 8
DESCRIPTIONS = {
    "fewshot-val": "min(K, val_shots) per class from train, disjoint from the support set",
    "coop-val": "min(K, 4) per class from the val split (CoOp's draw)",
    "full-val": "the whole val split",
    "val-free": "no validation set; fixed hyper-parameters",
    "oracle-test": "validation = test set (reproduction only; results are LEAKY)",
}
NO_VAL = (
    "{} needs a 'val' split and the source has none (ImageNet's CoOp 'val' is its test set). "
    "Use 'fewshot-val' (validation drawn from train), 'val-free', or 'oracle-test' for a LEAKY "
    "reproduction."
)


def test_the_labels_are_as_described() -> None:
    assert Counter(TRAIN) == {0: 12, 1: 7, 2: 30}
    assert Counter(VAL) == {0: 6, 1: 5, 2: 8}


def _ref(split: str, idx: Sequence[int] | None) -> dict[str, Any]:
    return {"split": split, "indices": None if idx is None else list(idx)}


def _record(
    name: str, shots: int | str, seed: int, support: list[int], val: dict | None, **meta: Any
) -> dict[str, Any]:
    leaky = name == "oracle-test"
    return {
        "protocol": name,
        "leaky": leaky,
        "mark": "LEAKY" if leaky else "",
        "shots": shots,
        "seed": seed,
        "support": _ref("train", support),
        "val": val,
        "meta": {"description": DESCRIPTIONS[name], **meta},
    }


def test_each_protocol_plans_the_reference_rows_and_records_how() -> None:
    kw = {"shots": 5, "seed": 2, "val_labels": VAL, "n_test": 9}
    few = Protocol("fewshot-val", val_shots=3).plan(TRAIN, **{**kw, "shots": 4})
    s, v = sample_fewshot_val(TRAIN, 4, seed=2, val_shots=3)
    assert few.to_dict() == _record(
        "fewshot-val", 4, 2, s, _ref("train", v), sampler="sample_fewshot_val", val_shots=3,
        repeat=False,
    )  # fmt: skip
    coop = Protocol("coop-val").plan(TRAIN, **kw)
    s, v = sample_coop(TRAIN, VAL, 5, seed=2)
    assert coop.to_dict() == _record(
        "coop-val", 5, 2, s, _ref("val", v), sampler="sample_coop", val_shots=4, repeat=False
    )
    s = sample_few_shot(TRAIN, 5, seed=2)
    for name, val in [
        ("full-val", _ref("val", None)),
        ("val-free", None),
        ("oracle-test", _ref("test", None)),
    ]:
        plan = Protocol(name).plan(TRAIN, **kw)
        assert plan.to_dict() == _record(
            name, 5, 2, s, val, sampler="sample_few_shot", repeat=False
        )
        json.dumps(plan.to_dict())  # the record is JSON as it stands
    assert coop.to_dict()["val"]["indices"] != few.to_dict()["val"]["indices"]


def test_plan_splits_is_the_protocols_plan() -> None:
    for name in ("fewshot-val", "coop-val", "full-val", "val-free", "oracle-test"):
        got = plan_splits(name, train_labels=TRAIN, shots=3, seed=4, val_labels=VAL, n_test=5)
        assert got == Protocol(name).plan(TRAIN, shots=3, seed=4, val_labels=VAL, n_test=5)
    assert plan_splits(train_labels=TRAIN, shots=3, seed=4).protocol == "fewshot-val"
    mine = Protocol("fewshot-val", val_shots=1)
    assert plan_splits(mine, train_labels=TRAIN, shots=3, seed=4).meta["val_shots"] == 1


@pytest.mark.parametrize("val_shots", [3, 1])
def test_shots_all_plans_every_image_and_records_the_class_sizes(val_shots: int) -> None:
    plan = Protocol("fewshot-val", val_shots=val_shots).plan(TRAIN, shots=ALL, seed=6)
    s, v = draw_all(TRAIN, seed=6, val_shots=val_shots)
    held = {c: min(val_shots, n // 5) for c, n in Counter(TRAIN).items()}  # 12, 7, 30 images
    assert Counter(TRAIN[i] for i in v) == held
    assert sorted(s + v) == list(range(len(TRAIN)))
    assert plan.to_dict() == _record(
        "fewshot-val", "all", 6, s, _ref("train", v), sampler="draw_all",
        val_per_class=[min(held.values()), max(held.values())], repeat=False,
        train_per_class=[7, 30],
    )  # fmt: skip


def test_shots_all_under_the_other_protocols() -> None:
    every = list(range(len(TRAIN)))
    kw = {"shots": ALL, "seed": 6, "val_labels": VAL, "n_test": 1}
    coop = Protocol("coop-val").plan(TRAIN, **kw)
    v = sample_few_shot(VAL, 4, seed=6)
    assert Counter(VAL[i] for i in v) == {0: 4, 1: 4, 2: 4}
    assert v != sample_few_shot(VAL, 4, seed=7)  # the seed reaches the val draw
    assert coop.to_dict() == _record(
        "coop-val", "all", 6, every, _ref("val", v), sampler="all", repeat=False,
        train_per_class=[7, 30],
    )  # fmt: skip
    for name, val in [
        ("full-val", _ref("val", None)),
        ("val-free", None),
        ("oracle-test", _ref("test", None)),
    ]:
        assert Protocol(name).plan(TRAIN, **kw).to_dict() == _record(
            name, "all", 6, every, val, sampler="all", repeat=False, train_per_class=[7, 30]
        )


def test_repeat_and_allow_fewer_reach_the_draw() -> None:
    small = [0] * 9 + [1] * 3  # class 1 cannot give 4 shots
    plan = Protocol("val-free", repeat=True).plan(small, shots=4, seed=1)
    assert list(plan.support.indices or ()) == sample_few_shot(small, 4, seed=1, repeat=True)
    assert Counter(small[i] for i in plan.support.indices or ()) == {0: 4, 1: 4}
    assert plan.meta["repeat"] is True
    lenient = Protocol("val-free", allow_fewer=True).plan(small, shots=4, seed=1)
    assert Counter(small[i] for i in lenient.support.indices or ()) == {0: 4, 1: 3}
    both = Protocol("fewshot-val", repeat=True, allow_fewer=True).plan(small, shots=4, seed=1)
    s, v = sample_fewshot_val(small, 4, seed=1, repeat=True)
    assert (list(both.support.indices or ()), list(both.val.indices or ())) == (s, v)  # type: ignore[union-attr]
    assert s != sample_fewshot_val(small, 4, seed=1)[0]
    val = [0] * 4 + [1] * 2
    coop = Protocol("coop-val", allow_fewer=True).plan(small, shots=4, seed=1, val_labels=val)
    assert (list(coop.support.indices or ()), list(coop.val.indices or ())) == sample_coop(  # type: ignore[union-attr]
        small, val, 4, seed=1
    )
    for name in ("val-free", "fewshot-val", "coop-val"):
        with pytest.raises(NotEnoughImagesError, match="class 1 has 3 images"):
            Protocol(name).plan(small, shots=4, seed=1, val_labels=val)


@pytest.mark.parametrize("shots", [1, ALL])
@pytest.mark.parametrize("name", ["fewshot-val", "coop-val", "full-val", "val-free", "oracle-test"])
def test_a_class_without_training_images_is_named(name: str, shots: int | str) -> None:
    names = ["cat", "dog", "owl"]
    no_owl = [c for c in TRAIN if c != 2] * 2
    kw: dict[str, Any] = {"shots": shots, "seed": 1, "val_labels": VAL, "n_test": 3}
    msg = r"train: 1 of 3 classes are empty: class 2 \('owl'\) has no images in train"
    with pytest.raises(NotEnoughImagesError, match=msg):
        Protocol(name).plan(no_owl, classnames=names, **kw)
    with pytest.raises(NotEnoughImagesError, match=msg):
        plan_splits(name, train_labels=no_owl, classnames=names, **kw)
    src = InMemorySource(train=_features(no_owl), val=_features(VAL), test=_features([0, 1, 2]))
    with pytest.raises(NotEnoughImagesError, match=msg):
        Protocol(name).plan_source(src, shots=shots, seed=1, classnames=names)
    with pytest.raises(NotEnoughImagesError, match=msg):
        run(_Nearest(), src, classnames=names, text_weights=_W, shots=shots, seed=1, protocol=name)
    Protocol(name).plan(no_owl, **kw)  # without class names, two classes are all there is


@pytest.mark.parametrize("shots", [1, ALL])
@pytest.mark.parametrize("name", ["coop-val", "full-val"])
def test_a_class_missing_from_the_val_split_is_named(name: str, shots: int | str) -> None:
    no_owl_val = [c for c in VAL if c != 2]
    with pytest.raises(
        NotEnoughImagesError,
        match=r"^val: 1 of 3 classes are empty: class 2 \('owl'\) has no images in val$",
    ):
        Protocol(name).plan(
            TRAIN, shots=shots, seed=1, val_labels=no_owl_val, classnames=["cat", "dog", "owl"]
        )


def test_a_single_val_image_per_class_is_enough_for_full_val() -> None:
    plan = Protocol("full-val").plan(TRAIN, shots=2, seed=1, val_labels=[0, 1, 2])
    assert plan.val == SplitRef("val", None)


def _raises(exc: type[Exception], message: str, fn: Any, *args: Any, **kw: Any) -> None:
    with pytest.raises(exc) as info:
        fn(*args, **kw)
    # a KeyError's str() is the repr of its message
    got = info.value.args[0] if isinstance(info.value, KeyError) else str(info.value)
    assert got == message


@pytest.mark.parametrize("shots", [2, ALL])
def test_plan_errors_word_for_word(shots: int | str) -> None:
    for name in ("coop-val", "full-val"):
        p = Protocol(name)
        _raises(ValueError, NO_VAL.format(name), p.plan, TRAIN, shots=shots, seed=1)
        _raises(
            ValueError, f"{name}: the val split is empty", p.plan, TRAIN, shots=shots, seed=1,
            val_labels=[],
        )  # fmt: skip
        no_val = InMemorySource(train=_features(TRAIN), test=_features([0, 1]))
        _raises(ValueError, NO_VAL.format(name), p.plan_source, no_val, shots=shots, seed=1)
    need = "oracle-test: n_test (the size of the test split) is needed"
    for n_test in (None, 0):
        _raises(ValueError, need, Protocol("oracle-test").plan, TRAIN, shots=shots, seed=1,
                n_test=n_test)  # fmt: skip
    one = Protocol("oracle-test").plan(TRAIN, shots=shots, seed=1, n_test=1)
    assert (one.val, one.leaky, one.mark) == (SplitRef("test", None), True, "LEAKY")


def test_other_errors_word_for_word() -> None:
    _raises(
        ValueError, "shots: expected a positive integer or 'all', found 'five'",
        Protocol().plan, TRAIN, shots="five", seed=1,
    )  # fmt: skip
    assert no_val_message("full-val", "ImageNet").startswith(
        "full-val needs a 'val' split and ImageNet has none (ImageNet's"
    )
    _raises(
        ValueError,
        "protocol: expected one of fewshot-val, coop-val, full-val, val-free, oracle-test, "
        "found 'test-val'",
        Protocol, "test-val",
    )  # fmt: skip
    _raises(
        ValueError, "coop-val draws without replacement (CoOp); repeat must be False",
        Protocol, "coop-val", repeat=True,
    )  # fmt: skip
    for bad in (True, "4", 2.0):
        _raises(TypeError, f"val_shots: expected an int, found {bad!r}", Protocol, val_shots=bad)
    _raises(ValueError, "val_shots: expected ≥ 1, found 0", Protocol, val_shots=0)
    assert Protocol(val_shots=1).val_shots == 1
    assert Protocol("full-val", repeat=True).repeat  # only coop-val refuses repeat
    sup = SplitRef("train", (0,))
    _raises(
        ValueError,
        "protocol: expected one of ('fewshot-val', 'coop-val', 'full-val', 'val-free', "
        "'oracle-test'), found 'x'",
        SplitPlan, "x", 1, 1, sup, None,
    )  # fmt: skip
    _raises(
        TestSetAccessError,
        "protocol 'full-val' may not validate on the test split; only 'oracle-test' may (and "
        "its results are marked LEAKY)",
        SplitPlan, "full-val", 1, 1, sup, SplitRef("test"),
    )  # fmt: skip
    _raises(
        TypeError, "SplitRef covers a whole split; its length is the split's length",
        len, SplitRef("val"),
    )  # fmt: skip
    assert len(SplitRef("val", (4, 1, 1))) == 3
    _raises(TypeError, "split 'val': expected a FeatureSet, found list", InMemorySource,
            val=[1, 2])  # fmt: skip
    src = InMemorySource(train=_features([0, 1]), test=_features([0]))
    _raises(KeyError, "feature source has no 'val' split (has: train, test)", src.labels, "val")


def test_the_split_records() -> None:
    assert SplitRef("val").to_dict() == {"split": "val", "indices": None}
    assert SplitRef("train", (3, 1)).to_dict() == {"split": "train", "indices": [3, 1]}
    plan = SplitPlan("val-free", 2, 5, SplitRef("train", (1, 0)), None, meta={"a": 1})
    record = plan.to_dict()
    assert record == {
        "protocol": "val-free",
        "leaky": False,
        "mark": "",
        "shots": 2,
        "seed": 5,
        "support": {"split": "train", "indices": [1, 0]},
        "val": None,
        "meta": {"a": 1},
    }
    record["meta"]["a"] = 2
    assert plan.meta == {"a": 1}  # the record is a copy


# --- sources, tasks, evaluation ---------------------------------------------------------------

_W = torch.eye(3)


def _features(labels: Sequence[int], views: int = 0) -> FeatureSet:
    """One-hot features of the labels: the nearest class mean is the label itself."""
    y = torch.as_tensor(list(labels), dtype=torch.long)
    x = torch.nn.functional.one_hot(y, 3).float() + 0.01
    v = x.expand(views, -1, -1).clone() if views else None
    return FeatureSet(x, y, v)


class _Nearest:
    """A fitted-on-nothing model: logits are the features themselves (3 classes)."""

    name = "nearest"

    def fit(self, task: Any) -> _Nearest:
        self.fitted_on = task
        return self

    def logits(self, x: Tensor) -> Tensor:
        return x.clone()


class _Recording(InMemorySource):
    def __init__(self, **splits: FeatureSet) -> None:
        super().__init__(**splits)
        self.calls: list[tuple[str, bool]] = []

    def features(
        self, split: str, index: Sequence[int] | None = None, *, views: bool = False
    ) -> FeatureSet:
        self.calls.append((split, views))
        return super().features(split, index, views=views)


def test_a_source_without_splits_is_asked_for_labels() -> None:
    class LabelsOnly:
        def __init__(self, **splits: FeatureSet) -> None:
            self.inner = InMemorySource(**splits)

        def labels(self, split: str) -> Tensor:
            if split not in ("train", "val", "test"):
                raise KeyError(split)
            return self.inner.labels(split)

        def features(self, split: str, index: Any = None, *, views: bool = False) -> FeatureSet:
            return self.inner.features(split, index, views=views)

    with_val = LabelsOnly(train=_features(TRAIN), val=_features(VAL), test=_features([0]))
    plan = Protocol("full-val").plan_source(with_val, shots=2, seed=1)  # type: ignore[arg-type]
    assert plan.val == SplitRef("val", None)

    class NoVal(LabelsOnly):
        def labels(self, split: str) -> Tensor:
            return self.inner.labels(split)

    without = NoVal(train=_features(TRAIN), test=_features([0]))
    _raises(
        ValueError, NO_VAL.format("coop-val"),
        Protocol("coop-val").plan_source, without, shots=2, seed=1,
    )  # fmt: skip


def test_build_task_reads_views_for_the_support_only_and_records_the_plan() -> None:
    src = _Recording(train=_features(TRAIN, views=2), val=_features(VAL, views=2))
    plan = Protocol("full-val").plan_source(src, shots=3, seed=8)
    task = build_task(plan, src, classnames=["a", "b", "c"], text_weights=_W)
    assert src.calls == [("train", True), ("val", False)]
    assert task.support.n_views == 2
    assert task.val is not None
    assert task.val.views is None
    assert task.meta == {
        "protocol": "full-val",
        "leaky": False,
        "mark": "",
        "shots": 3,
        "seed": 8,
        "val_split": "val",
        "n_support": 9,
        "n_val": len(VAL),
    }
    free = Protocol("val-free").plan_source(src, shots=ALL, seed=8)
    task = build_task(free, src, classnames=["a", "b", "c"], text_weights=_W, meta={"x": 1})
    assert (task.val, task.meta["n_val"], task.meta["val_split"]) == (None, 0, None)
    assert (task.meta["shots"], task.meta["seed"], task.meta["x"]) == ("all", 8, 1)
    _raises(TypeError, "plan: expected a SplitPlan, found dict", build_task, {}, src,
            classnames=["a"], text_weights=_W)  # fmt: skip


def test_the_guard_names_what_a_bad_source_returned() -> None:
    class Wrong(InMemorySource):
        answer: Any = None

        def features(self, split: str, index: Any = None, *, views: bool = False) -> Any:
            return self.answer(super().features(split, index, views=views))

    src = Wrong(train=_features(TRAIN))
    plan = Protocol("val-free").plan_source(src, shots=2, seed=1)
    kw: dict[str, Any] = {"classnames": ["a", "b", "c"], "text_weights": _W}
    src.answer = lambda fs: fs.features
    _raises(
        TypeError,
        "feature source returned Tensor for split 'train'; expected a fewclip.task.FeatureSet",
        build_task, plan, src, **kw,
    )  # fmt: skip
    src.answer = lambda fs: fs.subset([0, 1])
    _raises(
        ValueError, "feature source returned 2 rows for 6 requested indices of split 'train'",
        build_task, plan, src, **kw,
    )  # fmt: skip
    src.answer = lambda fs: FeatureSet(fs.features, fs.labels.roll(1))
    _raises(
        ValueError,
        "feature source returned labels for split 'train' that disagree with its labels(split) "
        "at the requested indices",
        build_task, plan, src, **kw,
    )  # fmt: skip
    forged = SplitPlan.__new__(SplitPlan)
    object.__setattr__(forged, "__dict__", {**plan.__dict__, "val": SplitRef("test")})
    _raises(
        TestSetAccessError,
        "test features may only be read by fewclip.protocol.evaluate (or as the validation set "
        "of an 'oracle-test' plan, whose results are marked LEAKY)",
        build_task, forged, InMemorySource(train=_features(TRAIN), test=_features([0])), **kw,
    )  # fmt: skip


def _eval_source() -> _Recording:
    test = _features([0, 1, 2, 2])
    # the last test image looks like class 1: three of four are right
    x = test.features.clone()
    x[3] = torch.tensor([0.0, 1.0, 0.5])
    return _Recording(
        train=_features(TRAIN, views=2),
        val=_features([0, 1, 2, 1]),
        test=FeatureSet(x, test.labels, torch.stack([x, x])),
    )


def test_evaluate_reports_the_accuracy_and_the_plan() -> None:
    src = _eval_source()
    plan = Protocol("fewshot-val").plan_source(src, shots=2, seed=3)
    src.calls.clear()
    res = evaluate(_Nearest(), src, plan, meta={"dataset": "toy"})
    assert src.calls == [("test", False)]  # never the augmented views of the test split
    assert res.to_dict() == {
        "protocol": "fewshot-val",
        "leaky": False,
        "mark": "",
        "method": "nearest",
        "shots": 2,
        "seed": 3,
        "split": "test",
        "n": 4,
        "accuracy": 0.75,
        "params": {},
        "meta": {"dataset": "toy"},
    }
    assert str(res) == "nearest 2-shot seed 3 [fewshot-val] test: 75.00% of 4"
    on_val = evaluate(_Nearest(), src, plan, split="val")
    assert (on_val.split, on_val.n, on_val.accuracy) == ("val", 4, 1.0)
    oracle = Protocol("oracle-test").plan_source(src, shots=ALL, seed=1)
    res = evaluate(_Nearest(), src, oracle)
    assert (res.leaky, res.mark, res.shots) == (True, "LEAKY", "all")
    assert str(res) == "nearest all-shot seed 1 [oracle-test, LEAKY] test: 75.00% of 4"


def test_evaluate_on_a_class_subset_and_its_errors() -> None:
    src = _eval_source()
    plan = Protocol("val-free").plan_source(src, shots=1, seed=1)
    # keep logit columns 2 and 1: labels 0 and 1 index that subset
    x = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.2, 0.1]])
    sub = InMemorySource(test=FeatureSet(x, torch.tensor([0, 1, 1])))
    res = evaluate(_Nearest(), sub, plan, class_index=[2, 1])
    assert (res.accuracy, res.meta) == (1.0, {"class_subset": 2})
    assert evaluate(_Nearest(), sub, plan).accuracy == pytest.approx(1 / 3)  # all 3 columns
    _raises(
        ValueError,
        "test: labels go up to 2 but the model scores 2 classes (pass class_index for a class "
        "subset)",
        evaluate, _Nearest(), src, plan, class_index=[0, 1],
    )  # fmt: skip
    _raises(TypeError, "model: expected an object with logits(x), found object", evaluate,
            object(), src, plan)  # fmt: skip

    class Listy(InMemorySource):
        def features(self, split: str, index: Any = None, *, views: bool = False) -> Any:
            return [1, 2]

    _raises(TypeError, "feature source returned list, expected a FeatureSet", evaluate,
            _Nearest(), Listy(test=_features([0])), plan)  # fmt: skip


def test_evaluate_names_an_unnamed_model_by_its_class_and_records_its_parameters() -> None:
    class Plain:
        def logits(self, x: Tensor) -> Tensor:
            return x

    class Nameless(Plain):
        name = None

    class Tuned(Plain):
        name = "tuned"
        alpha_ = 0.5
        beta_ = float("nan")  # not a finite number: left out
        best_epoch_ = 3

        def get_params(self) -> dict[str, Any]:
            return {
                "lr": 1e-3, "flag": True, "note": None, "grid": (1, 2.5, "x"),
                "nested": [1, [2]], "device": torch.device("cpu"),
            }  # fmt: skip

    src = _eval_source()
    plan = Protocol("val-free").plan_source(src, shots=1, seed=1)
    assert evaluate(Plain(), src, plan).method == "Plain"
    assert evaluate(Nameless(), src, plan).method == "Nameless"
    assert evaluate(Tuned(), src, plan).params == {
        "lr": 1e-3,
        "flag": True,
        "note": None,
        "grid": [1, 2.5, "x"],
        "nested": "[1, [2]]",
        "device": "device(type='cpu')",
        "alpha_": 0.5,
        "best_epoch_": 3,
    }


def test_eval_result_text_without_shots_or_seed() -> None:
    res = EvalResult("val-free", False, 0.123456, 7)
    assert str(res) == "model [val-free] test: 12.35% of 7"
    assert res.to_dict()["method"] is None


def test_run_is_plan_build_fit_evaluate() -> None:
    src = _eval_source()
    model = _Nearest()
    res = run(
        model, src, classnames=["a", "b", "c"], text_weights=_W, shots=2, seed=3,
        protocol=Protocol("fewshot-val", val_shots=1), meta={"dataset": "toy"},
    )  # fmt: skip
    plan = Protocol("fewshot-val", val_shots=1).plan_source(src, shots=2, seed=3)
    assert model.fitted_on.support.n == 6
    assert model.fitted_on.val.n == 3  # val_shots=1 of the Protocol given
    assert model.fitted_on.meta["dataset"] == "toy"
    assert res == evaluate(model, src, plan, meta={"dataset": "toy"})
    _raises(
        ValueError, "params: only with a method name (set them on the estimator)",
        run, _Nearest(), src, classnames=["a", "b", "c"], text_weights=_W, shots=2, seed=3,
        params={"alpha": 1.0},
    )  # fmt: skip
    named = run(
        "tip-adapter", src, classnames=["a", "b", "c"], text_weights=_W, shots=2, seed=3,
        params={"alpha": 2.5, "beta": 1.5},
    )  # fmt: skip
    assert (named.method, named.params["alpha"], named.params["beta"]) == ("tip-adapter", 2.5, 1.5)
    assert math.isfinite(named.accuracy)


def test_labels_may_be_a_list_a_tensor_or_an_array() -> None:
    import numpy as np

    want = Protocol().plan(TRAIN, shots=3, seed=2)
    assert Protocol().plan(torch.tensor(TRAIN), shots=3, seed=2) == want
    assert Protocol().plan(np.array(TRAIN), shots=3, seed=2) == want
    coop = Protocol("coop-val").plan(TRAIN, shots=3, seed=2, val_labels=VAL)
    assert Protocol("coop-val").plan(TRAIN, shots=3, seed=2, val_labels=np.array(VAL)) == coop


def test_in_memory_source_leaves_views_out_unless_asked() -> None:
    src = InMemorySource(train=_features([0, 1, 2], views=2))
    assert src.features("train").views is None
    assert src.features("train", [2, 0]).labels.tolist() == [2, 0]
    with_views = src.features("train", views=True).views
    assert with_views is not None
    assert tuple(with_views.shape) == (2, 3, 3)


def test_evaluate_on_an_empty_split_reports_nan_of_zero() -> None:
    src = _eval_source()
    plan = Protocol("val-free").plan_source(src, shots=1, seed=1)
    empty = InMemorySource(test=FeatureSet(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)))
    res = evaluate(_Nearest(), empty, plan)
    assert res.n == 0
    assert math.isnan(res.accuracy)
    assert str(res) == "nearest 1-shot seed 1 [val-free] test: nan% of 0"
