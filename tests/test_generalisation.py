"""fewclip.generalisation: the base/new split, relabelling, H, class subsets and the -A/-R
class mapping, on hand-checked small cases."""

from __future__ import annotations

import pytest
import torch

from fewclip.errors import InvalidValueError
from fewclip.generalisation import (
    ClassSubsetSource,
    average,
    base_new_split,
    check_class_mapping,
    harmonic_mean,
    subset_plan,
)
from fewclip.protocol import InMemorySource, Protocol
from fewclip.task import FeatureSet


# -- the base/new split (CoOp's subsample_classes) ---------------------------------------------
@pytest.mark.parametrize(
    ("n", "n_base"),
    [(2, 1), (3, 2), (4, 2), (5, 3), (10, 5), (37, 19), (47, 24), (100, 50), (101, 51)],
)
def test_base_gets_ceil_half(n: int, n_base: int) -> None:
    # 37 Oxford Pets breeds -> 19 base + 18 new; DTD's 47 -> 24 + 23; UCF101 -> 51 + 50
    base, new = base_new_split(torch.arange(n).repeat(3))
    assert base == list(range(n_base))
    assert new == list(range(n_base, n))


def test_split_sorts_the_labels_present_in_train() -> None:
    # the reference sorts the set of labels found in the (few-shot) train split
    base, new = base_new_split([7, 3, 3, 0, 5, 2, 7, 0])
    assert (base, new) == ([0, 2, 3], [5, 7])


def test_split_needs_two_classes() -> None:
    with pytest.raises(InvalidValueError, match="at least 2 classes"):
        base_new_split([4, 4, 4])


# -- the harmonic mean -------------------------------------------------------------------------
def test_harmonic_mean_by_hand() -> None:
    assert harmonic_mean(80.0, 60.0) == pytest.approx(2 * 80 * 60 / 140)  # 68.571...
    assert harmonic_mean(50.0, 50.0) == 50.0
    assert harmonic_mean(100.0, 0.0) == 0.0
    assert harmonic_mean(0.0, 0.0) == 0.0
    assert harmonic_mean(None, 50.0) is None
    assert harmonic_mean(50.0, None) is None
    # CoCoOp's averages: CLIP 69.34 / 74.22 -> 71.70, CoCoOp 80.47 / 71.69 -> 75.83
    assert round(harmonic_mean(69.34, 74.22) or 0, 2) == 71.70
    assert round(harmonic_mean(80.47, 71.69) or 0, 2) == 75.83
    with pytest.raises(InvalidValueError):
        harmonic_mean(-1.0, 50.0)


def test_average_needs_every_value() -> None:
    assert average({"a": 1.0, "b": 2.0}) == 1.5
    assert average({"a": 1.0, "b": None}) is None
    assert average({}) is None


# -- relabelling through a class subset --------------------------------------------------------
def _source() -> InMemorySource:
    """5 classes; row i of every split has label i % 5 and feature [i, label, 0, 0]."""

    def split(n: int, views: bool) -> FeatureSet:
        y = torch.arange(n) % 5
        x = torch.stack([torch.arange(n).float(), y.float(), torch.zeros(n), torch.zeros(n)], 1)
        v = torch.stack([x + 0.5, x + 0.25]) if views else None
        return FeatureSet(x + 1.0, y, v)

    return InMemorySource(train=split(40, True), val=split(10, False), test=split(15, False))


def test_subset_relabels_in_order_and_keeps_row_order() -> None:
    src = ClassSubsetSource(_source(), [3, 4])
    # rows of classes 3 and 4 in their order: 3, 4, 8, 9, 13, 14 of the test split
    assert src.parent_rows("test").tolist() == [3, 4, 8, 9, 13, 14]
    assert src.labels("test").tolist() == [0, 1, 0, 1, 0, 1]  # 3 -> 0, 4 -> 1
    fs = src.features("test")
    assert fs.features[:, 0].tolist() == [4.0, 5.0, 9.0, 10.0, 14.0, 15.0]  # x + 1
    assert fs.labels.tolist() == [0, 1, 0, 1, 0, 1]
    part = src.features("train", [1, 0], views=True)
    assert part.features[:, 0].tolist() == [5.0, 4.0]
    assert part.views is not None
    assert part.views.shape == (2, 2, 4)
    assert part.labels.tolist() == [1, 0]


def test_subset_order_of_classes_is_the_new_label_order() -> None:
    src = ClassSubsetSource(_source(), [4, 0])
    assert src.labels("val").tolist() == [1, 0, 1, 0]  # rows 0, 4, 5, 9: labels 0, 4, 0, 4


def test_subset_maps_parent_rows_both_ways() -> None:
    src = ClassSubsetSource(_source(), [0, 1, 2])
    # kept parent rows: 0, 1, 2, 5, 6, 7, 10, 11, 12, ... (labels 0-2); 3 and 4 are dropped
    assert src.from_parent("train", [3, 0, 6, 12, 4]) == [0, 4, 8]
    assert src.to_parent("train", [0, 4, 8]) == [0, 6, 12]
    with pytest.raises(InvalidValueError, match="indices must lie"):
        src.features("train", [99])


def test_subset_plan_keeps_the_whole_draw_of_the_subset() -> None:
    source = _source()
    whole = Protocol("fewshot-val").plan_source(source, shots=2, seed=1)
    base = ClassSubsetSource(source, [0, 1, 2])
    plan = subset_plan(whole, base)
    assert plan.support.indices is not None
    assert plan.val is not None
    # the same images as the whole draw's rows of classes 0, 1, 2
    parents = base.to_parent("train", plan.support.indices)
    assert parents == [i for i in whole.support.indices or () if i % 5 in (0, 1, 2)]
    assert len(parents) == 6
    assert base.to_parent("train", plan.val.indices or ()) == [
        i for i in whole.val.indices or () if i % 5 < 3
    ]
    assert plan.meta["classes"] == [0, 1, 2]
    assert plan.protocol == "fewshot-val"
    # a whole-split validation set stays whole (the subset's split holds only its classes)
    full = subset_plan(Protocol("full-val").plan_source(source, shots=2, seed=1), base)
    assert full.val is not None
    assert full.val.indices is None


# -- ImageNet-A/-R: 200 classes mapped to ImageNet ids -----------------------------------------
def test_class_mapping_by_name() -> None:
    names = [f"class {i}" for i in range(10)]
    subset = [1, 4, 7]  # the variant's classes 0, 1, 2 are the source's 1, 4, 7
    check_class_mapping(names, [names[i] for i in subset], subset, target="tiny-a")
    check_class_mapping(names, names, None, target="tiny-v2")  # all classes, same order
    with pytest.raises(InvalidValueError, match="class 1 'class 5' vs source 'class 4'"):
        check_class_mapping(names, ["class 1", "class 5", "class 7"], subset, target="tiny-a")
    with pytest.raises(InvalidValueError, match="3 classes and no class_index"):
        check_class_mapping(names, names[:3], None)
    with pytest.raises(InvalidValueError, match="outside the source's 10 classes"):
        check_class_mapping(names, names[:2], [0, 12])
    with pytest.raises(InvalidValueError, match="2 entries for 3 classes"):
        check_class_mapping(names, names[:3], [0, 1])


def test_restricted_logits_are_the_subset_head() -> None:
    """Scoring -A/-R with the source classifier's columns ``class_index`` is scoring with the
    200-way head built from the same classes' weights (the reference's construction)."""
    from fewclip.protocol import SplitPlan, SplitRef, evaluate

    g = torch.Generator().manual_seed(0)
    weights = torch.nn.functional.normalize(torch.randn(10, 8, generator=g), dim=1)
    subset = [2, 5, 9]
    y = torch.tensor([0, 1, 2, 2, 1, 0])
    x = weights[torch.tensor(subset)][y] + 0.3 * torch.randn(6, 8, generator=g)

    class Linear:
        def __init__(self, w: torch.Tensor) -> None:
            self.w = w

        def logits(self, q: torch.Tensor) -> torch.Tensor:
            return q @ self.w.T

    plan = SplitPlan("val-free", 1, 1, SplitRef("train", (0,)), None)
    src = InMemorySource(test=FeatureSet(x, y))
    restricted = evaluate(Linear(weights), src, plan, class_index=subset)
    head = evaluate(Linear(weights[torch.tensor(subset)]), src, plan)
    assert restricted.accuracy == head.accuracy
    assert restricted.meta["class_subset"] == 3
