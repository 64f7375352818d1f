"""The evaluation protocol: test features are read only by evaluate(); oracle-test is LEAKY."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from torch import Tensor

from fewclip import methods
from fewclip.data import (
    Dataset,
    ImageList,
    plan_dataset,
    read_split,
    sample_coop,
    sample_few_shot,
    save_plan,
)
from fewclip.errors import InvalidValueError
from fewclip.protocol import (
    LEAKY,
    PROTOCOLS,
    EvalResult,
    FeatureSource,
    InMemorySource,
    Protocol,
    SplitPlan,
    SplitRef,
    TestSetAccessError,
    build_task,
    evaluate,
    plan_splits,
    run,
)
from fewclip.task import FeatureSet
from fewclip.testing.synthetic import SyntheticWorld

C, D = 5, 32


@pytest.fixture(scope="module")
def world() -> SyntheticWorld:
    return SyntheticWorld(C, D, seed=3, test_size=100, val_size=50)


def _splits(world: SyntheticWorld) -> dict[str, FeatureSet]:
    return {
        "train": world.sample([24] * C, stream=101, views=2),
        "val": world.sample([10] * C, stream=102),
        "test": world.test_set(),
    }


class NaNTestSource:
    """Train and val are fine; every test feature is NaN. Records every access."""

    def __init__(self, splits: dict[str, FeatureSet]) -> None:
        self.inner = InMemorySource(train=splits["train"], val=splits["val"])
        n = splits["test"].n
        self.test_x = torch.full((n, D), float("nan"))
        self.test_y = splits["test"].labels
        self.feature_calls: list[str] = []
        self.label_calls: list[str] = []

    def splits(self) -> list[str]:
        return ["train", "val", "test"]

    def labels(self, split: str) -> Tensor:
        self.label_calls.append(split)
        return self.test_y if split == "test" else self.inner.labels(split)

    def features(
        self, split: str, index: Sequence[int] | None = None, *, views: bool = False
    ) -> FeatureSet:
        self.feature_calls.append(split)
        if split == "test":
            x, y = self.test_x, self.test_y
            if index is not None:
                x, y = x[list(index)], y[list(index)]
            return FeatureSet(x, y)  # raises: NaN features
        return self.inner.features(split, index, views=views)


def test_source_protocol_is_structural(world: SyntheticWorld) -> None:
    assert isinstance(InMemorySource(_splits(world)), FeatureSource)
    assert isinstance(NaNTestSource(_splits(world)), FeatureSource)


@pytest.mark.parametrize("protocol", ["fewshot-val", "coop-val", "full-val", "val-free"])
def test_search_never_touches_nan_test_features(world: SyntheticWorld, protocol: str) -> None:
    src = NaNTestSource(_splits(world))
    plan = Protocol(protocol).plan_source(src, shots=4, seed=1, classnames=world.classnames)
    task = build_task(plan, src, classnames=world.classnames, text_weights=world.text_weights)
    model = methods.create("tip-adapter", search_step=(20, 10)).fit(task)
    assert "test" not in src.feature_calls
    assert "test" not in src.label_calls
    assert math.isfinite(model.alpha_)
    assert math.isfinite(model.beta_)
    if protocol != "val-free":
        assert task.val is not None
        assert hasattr(model, "val_accuracy_")
    # predictions on non-test data work; evaluation is where test features are opened
    assert model.predict(task.support.features).shape == (task.support.n,)
    with pytest.raises(ValueError, match="NaN"):
        evaluate(model, src, plan)
    assert src.feature_calls[-1] == "test"


def test_fewshot_val_plan_is_disjoint_and_reference_support(world: SyntheticWorld) -> None:
    y = _splits(world)["train"].labels
    plan = plan_splits("fewshot-val", train_labels=y, shots=8, seed=2)
    assert list(plan.support.indices or ()) == sample_few_shot(y, 8, seed=2)
    assert plan.val is not None
    assert plan.val.split == "train"
    assert not set(plan.support.indices or ()) & set(plan.val.indices or ())
    assert len(plan.val) == 4 * C
    assert not plan.leaky
    assert plan.mark == ""
    assert plan_splits("fewshot-val", train_labels=y, shots=2, seed=2).val is not None
    assert len(plan_splits("fewshot-val", train_labels=y, shots=2, seed=2).val or ()) == 2 * C


def test_coop_val_plan_matches_sample_coop(world: SyntheticWorld) -> None:
    s = _splits(world)
    plan = Protocol("coop-val").plan(s["train"].labels, val_labels=s["val"].labels, shots=8, seed=3)
    tr, va = sample_coop(s["train"].labels, s["val"].labels, 8, seed=3)
    assert plan.support == SplitRef("train", tuple(tr))
    assert plan.val == SplitRef("val", tuple(va))


def test_protocols_need_a_val_split(world: SyntheticWorld) -> None:
    s = _splits(world)
    no_val = InMemorySource(train=s["train"], test=s["test"])  # like ImageNet
    for name in ("coop-val", "full-val"):
        with pytest.raises(ValueError, match="needs a 'val' split.*fewshot-val"):
            Protocol(name).plan_source(no_val, shots=2, seed=1)
    assert Protocol("fewshot-val").plan_source(no_val, shots=2, seed=1).val is not None


def test_plan_invariants() -> None:
    with pytest.raises(TestSetAccessError, match="may not validate on the test split"):
        SplitPlan("fewshot-val", 1, 1, SplitRef("train", (0,)), SplitRef("test"), False)
    with pytest.raises(ValueError, match="leaky must be True"):
        SplitPlan("oracle-test", 1, 1, SplitRef("train", (0,)), SplitRef("test"), False)
    with pytest.raises(ValueError, match="support must come from 'train'"):
        SplitPlan("val-free", 1, 1, SplitRef("val", (0,)), None, False)
    with pytest.raises(ValueError, match="protocol: expected one of"):
        Protocol("test-val")
    assert PROTOCOLS[0] == "fewshot-val"
    assert Protocol().name == "fewshot-val"


def test_build_task_refuses_test_unless_oracle(world: SyntheticWorld) -> None:
    src = InMemorySource(_splits(world))
    # a hand-made plan cannot smuggle test in: SplitPlan rejects it, and the guard
    # refuses reads of the test split for non-oracle plans
    plan = plan_splits("val-free", train_labels=src.labels("train"), shots=2, seed=1)
    forged = SplitPlan.__new__(SplitPlan)
    object.__setattr__(forged, "__dict__", {**plan.__dict__, "val": SplitRef("test")})
    with pytest.raises(TestSetAccessError, match="only be read by fewclip.protocol.evaluate"):
        build_task(forged, src, classnames=world.classnames, text_weights=world.text_weights)


def test_build_task_meta_and_views(world: SyntheticWorld) -> None:
    src = InMemorySource(_splits(world))
    plan = Protocol("fewshot-val").plan_source(src, shots=3, seed=1)
    task = build_task(
        plan, src, classnames=world.classnames, text_weights=world.text_weights, meta={"ds": "x"}
    )
    assert task.support.n_views == 2
    assert task.val is not None
    assert task.val.views is None
    assert task.meta["protocol"] == "fewshot-val"
    assert task.meta["leaky"] is False
    assert task.meta["n_support"] == 3 * C
    assert task.meta["n_val"] == 3 * C
    assert task.meta["ds"] == "x"
    assert task.meta["val_split"] == "train"


def test_source_returning_wrong_rows_is_caught(world: SyntheticWorld) -> None:
    s = _splits(world)

    class Shuffled(InMemorySource):
        def features(
            self, split: str, index: Sequence[int] | None = None, *, views: bool = False
        ) -> FeatureSet:
            idx = None if index is None else list(reversed(list(index)))
            return super().features(split, idx, views=views)

    src = Shuffled(s)
    plan = Protocol("val-free").plan_source(src, shots=2, seed=1)
    with pytest.raises(ValueError, match="labels for split 'train' that disagree"):
        build_task(plan, src, classnames=world.classnames, text_weights=world.text_weights)


def _unit(x: Tensor) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def test_oracle_test_results_are_leaky(world: SyntheticWorld) -> None:
    s = _splits(world)
    src = InMemorySource(s)
    res = run(
        "tip-adapter",
        src,
        classnames=world.classnames,
        text_weights=world.text_weights,
        shots=4,
        seed=1,
        protocol="oracle-test",
        params={"search_step": (20, 10)},
    )
    assert isinstance(res, EvalResult)
    assert res.leaky
    assert res.mark == LEAKY
    assert res.protocol == "oracle-test"
    d = res.to_dict()
    assert d["leaky"] is True
    assert d["mark"] == "LEAKY"
    assert json.loads(json.dumps(d))["protocol"] == "oracle-test"
    assert "LEAKY" in str(res)
    assert "oracle-test" in str(res)
    assert res.n == world.test_size
    assert res.method == "tip-adapter"
    # the reported accuracy: Tip-Adapter's logits (paper Eq. 6) at the selected (α, β), with the
    # cache of the drawn support set, on the test set
    alpha, beta = res.params["alpha_"], res.params["beta_"]
    plan = Protocol("oracle-test").plan_source(src, shots=4, seed=1)
    support = src.features("train", plan.support.indices, views=True)
    keys = _unit(support.views.double().mean(0))
    onehot = torch.nn.functional.one_hot(support.labels, C).double()
    test = s["test"]
    x, w = _unit(test.features.double()), _unit(world.text_weights.double())
    logits = 100 * x @ w.T + alpha * torch.exp(-beta * (1 - x @ keys.T)) @ onehot
    expected = float((logits.argmax(1) == test.labels).double().mean())
    assert res.accuracy == pytest.approx(expected, abs=1e-6)

    clean = run(
        "tip-adapter",
        src,
        classnames=world.classnames,
        text_weights=world.text_weights,
        shots=4,
        seed=1,
        params={"search_step": (20, 10)},
    )
    assert not clean.leaky
    assert clean.mark == ""
    assert "LEAKY" not in str(clean)
    assert clean.protocol == "fewshot-val"
    # same support set; selecting (α, β) on the test set itself cannot do worse on it than
    # selecting them on validation images
    assert Protocol("fewshot-val").plan_source(src, shots=4, seed=1).support == plan.support
    assert res.accuracy >= clean.accuracy


def test_oracle_task_validates_on_test(world: SyntheticWorld) -> None:
    s = _splits(world)
    src = InMemorySource(s)
    plan = Protocol("oracle-test").plan_source(src, shots=2, seed=1)
    assert plan.leaky
    assert plan.val == SplitRef("test", None)
    task = build_task(plan, src, classnames=world.classnames, text_weights=world.text_weights)
    assert task.meta["leaky"] is True
    assert task.meta["mark"] == LEAKY
    assert task.val is not None
    assert torch.equal(task.val.features, s["test"].features)


def test_evaluate_class_subset(world: SyntheticWorld) -> None:
    class Fixed:
        name = "fixed"

        def logits(self, x: Tensor) -> Tensor:
            out = torch.zeros(len(x), 10)
            out[:, 7] = 1.0  # global argmax would be 7
            out[:, 3] = 0.5  # within the subset [3, 5], column 3 wins → label 0
            return out

    fs = FeatureSet(torch.randn(4, D), torch.tensor([0, 0, 1, 0]))
    src = InMemorySource(test=fs)
    plan = SplitPlan("val-free", 1, 1, SplitRef("train", (0,)), None, False)
    res = evaluate(Fixed(), src, plan, class_index=[3, 5])
    assert res.accuracy == pytest.approx(0.75)
    assert res.meta["class_subset"] == 2
    with pytest.raises(ValueError, match="pass class_index"):
        evaluate(Fixed(), InMemorySource(test=FeatureSet(fs.features, fs.labels + 9)), plan)


def test_evaluate_refuses_logits_for_other_classes() -> None:
    # a model fitted on 10 classes, scored on a split of 4 whose labels all lie in 0..3: without
    # n_classes the argmax would range over 10 columns and the accuracy would look plausible
    class TenClasses:
        def logits(self, x: Tensor) -> Tensor:
            out = torch.zeros(len(x), 10)
            out[:, 8] = 1.0
            return out

    src = InMemorySource(test=FeatureSet(torch.randn(3, D), torch.tensor([0, 1, 3])))
    plan = SplitPlan("val-free", 1, 1, SplitRef("train", (0,)), None, False)
    assert evaluate(TenClasses(), src, plan).accuracy == 0.0  # the old, silent behaviour
    with pytest.raises(ValueError, match="the split has 4 classes but the model scores 10"):
        evaluate(TenClasses(), src, plan, n_classes=4)
    with pytest.raises(ValueError, match="the split has 11 classes but the model scores 10"):
        evaluate(TenClasses(), src, plan, n_classes=11)
    assert evaluate(TenClasses(), src, plan, n_classes=10).n == 3
    # a class subset is counted after class_index
    sub = evaluate(TenClasses(), src, plan, class_index=[0, 1, 2, 3], n_classes=4)
    assert sub.accuracy == pytest.approx(1 / 3)  # all-zero rows: argmax 0, one label is 0
    with pytest.raises(ValueError, match="the split has 3 classes but the model scores 4"):
        evaluate(TenClasses(), src, plan, class_index=[0, 1, 2, 3], n_classes=3)


def test_the_class_count_error_says_what_to_do() -> None:
    class TenClasses:
        def logits(self, x: Tensor) -> Tensor:
            return torch.zeros(len(x), 10)

    src = InMemorySource(test=FeatureSet(torch.randn(3, D), torch.tensor([0, 1, 3])))
    plan = SplitPlan("val-free", 1, 1, SplitRef("train", (0,)), None, False)
    with pytest.raises(InvalidValueError) as e:
        evaluate(TenClasses(), src, plan, n_classes=4)
    assert str(e.value) == (
        "test: the split has 4 classes but the model scores 10 (was it fitted on other "
        "classes? Methods that can name new classes build a model for them with for_classes; "
        "pass class_index for a subset)"
    )


def test_run_checks_the_model_scores_every_class_of_the_split(world: SyntheticWorld) -> None:
    """``run`` evaluates with the class count of its class names: an estimator that scores
    one class too many is refused, not scored over the wrong columns."""

    class OneTooMany:
        def fit(self, task: object) -> OneTooMany:
            return self

        def logits(self, x: Tensor) -> Tensor:
            out = torch.zeros(len(x), C + 1)
            out[:, 0] = 1.0
            return out

    src = InMemorySource(_splits(world))
    with pytest.raises(ValueError, match=f"the split has {C} classes but the model scores {C + 1}"):
        run(
            OneTooMany(),
            src,
            classnames=world.classnames,
            text_weights=world.text_weights,
            shots=2,
            seed=1,
            protocol="val-free",
        )


def test_build_task_hands_the_text_tower_to_the_task(world: SyntheticWorld) -> None:
    from fewclip.testing.text_tower import ToyTextTower

    src = InMemorySource(_splits(world))
    plan = Protocol("val-free").plan_source(src, shots=1, seed=1, classnames=world.classnames)
    tower = ToyTextTower(D, seed=0)
    kw = dict(classnames=world.classnames, text_weights=world.text_weights)
    assert build_task(plan, src, text_tower=tower, **kw).text_tower is tower
    assert build_task(plan, src, **kw).text_tower is None


def test_plan_save_writes_split_json(tmp_path: Path, world: SyntheticWorld) -> None:
    names = tuple(world.classnames)
    y = [c for c in range(C) for _ in range(10)]
    lists = {
        "train": ImageList(
            tmp_path, tuple(f"{c}/{i}.jpg" for i, c in enumerate(y)), tuple(y), names
        ),
        "test": ImageList(tmp_path, ("t.jpg",), (0,), names),
    }
    ds = Dataset("toy", tmp_path, names, lists)
    plan = plan_dataset("oracle-test", ds, shots=2, seed=1)
    rec = read_split(save_plan(plan, tmp_path / "draw.json", ds))
    assert rec["protocol"] == "oracle-test"
    assert rec["leaky"] is True
    assert rec["parts"]["support"]["indices"] == list(plan.support.indices or ())
    assert rec["parts"]["val"]["split"] == "test"
    assert "indices" not in rec["parts"]["val"]
    with pytest.raises(ValueError, match="needs a 'val' split"):
        plan_dataset("full-val", ds, shots=2, seed=1)
