"""The few-shot draws equal a direct re-implementation of the references with ``random``."""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

import numpy as np
import pytest
import torch

from fewclip.data import (
    NotEnoughImagesError,
    draw_coop,
    draw_fewshot_val,
    group_by_label,
    sample_coop,
    sample_few_shot,
    sample_fewshot_val,
)


class Datum:
    """Stands in for Dassl's Datum: the reference samples objects, not indices."""

    def __init__(self, i: int, label: Any) -> None:
        self.i, self.label = i, label


def ref_generate_fewshot(data_source: list[Datum], num_shots: int, repeat: bool) -> list[Datum]:
    """Dassl ``DatasetBase.generate_fewshot_dataset`` for one data source (global ``random``)."""
    tracker: defaultdict[Any, list[Datum]] = defaultdict(list)
    for item in data_source:
        tracker[item.label].append(item)
    dataset: list[Datum] = []
    for _label, items in tracker.items():
        if len(items) >= num_shots:
            sampled = random.sample(items, num_shots)
        elif repeat:
            sampled = random.choices(items, k=num_shots)
        else:
            sampled = items
        dataset.extend(sampled)
    return dataset


def ref_few_shot(labels: list[Any], shots: int, seed: int, repeat: bool) -> list[int]:
    random.seed(seed)
    data = [Datum(i, y) for i, y in enumerate(labels)]
    return [d.i for d in ref_generate_fewshot(data, shots, repeat)]


def ref_coop(
    train: list[Any], val: list[Any], shots: int, seed: int
) -> tuple[list[int], list[int]]:
    random.seed(seed)
    tr = ref_generate_fewshot([Datum(i, y) for i, y in enumerate(train)], shots, False)
    va = ref_generate_fewshot([Datum(i, y) for i, y in enumerate(val)], min(shots, 4), False)
    return [d.i for d in tr], [d.i for d in va]


def _labels(rng: random.Random, n_classes: int, lo: int, hi: int, order: str) -> list[Any]:
    labels: list[Any] = []
    for c in range(n_classes):
        labels += [c] * rng.randint(lo, hi)
    if order == "shuffled":
        rng.shuffle(labels)
    elif order == "reversed":
        labels.reverse()
    elif order == "strings":
        names = [f"class_{rng.randint(0, 10**6)}_{c}" for c in range(n_classes)]
        labels = [names[y] for y in labels]
        rng.shuffle(labels)
    return labels


CASES = [
    (seed, shots, order)
    for seed in (0, 1, 2, 3, 7, 42, 1234, 2**31 - 1)
    for shots in (1, 2, 4, 8, 16)
    for order in ("grouped", "shuffled", "reversed", "strings")
]


@pytest.mark.parametrize("repeat", [False, True])
def test_sample_few_shot_equals_reference(repeat: bool) -> None:
    gen = random.Random(99)
    for seed, shots, order in CASES:
        # some classes have fewer images than shots: exercises choices / take-all
        labels = _labels(gen, gen.randint(1, 12), 1, 25, order)
        want = ref_few_shot(labels, shots, seed, repeat)
        assert sample_few_shot(labels, shots, seed=seed, repeat=repeat) == want, (
            seed,
            shots,
            order,
        )


def test_global_random_state_untouched() -> None:
    random.seed(5)
    before = random.getstate()
    sample_few_shot([0, 1, 1, 0, 2], 1, seed=3)
    sample_coop([0, 1, 1, 0], [1, 0], 1, seed=3)
    assert random.getstate() == before


def test_sample_coop_equals_reference() -> None:
    gen = random.Random(7)
    for seed, shots, order in CASES:
        n = gen.randint(1, 10)
        train = _labels(gen, n, 1, 30, "grouped" if order == "strings" else order)
        val = _labels(gen, n, 1, 8, "shuffled")
        got = sample_coop(train, val, shots, seed=seed)
        assert got == ref_coop(train, val, shots, seed), (seed, shots, order)
        assert got[0] == sample_few_shot(train, shots, seed=seed)


def test_tensor_and_array_labels() -> None:
    labels = [2, 0, 1, 2, 0, 1, 1, 2, 0, 0]
    want = sample_few_shot(labels, 2, seed=1)
    assert sample_few_shot(torch.tensor(labels), 2, seed=1) == want
    assert sample_few_shot(np.array(labels), 2, seed=1) == want


def test_group_by_label_first_appearance() -> None:
    assert group_by_label(["b", "a", "b", "c", "a"]) == {"b": [0, 2], "a": [1, 4], "c": [3]}


def test_sample_fewshot_val_disjoint_and_same_support() -> None:
    gen = random.Random(3)
    for seed, shots, order in CASES[:60]:
        labels = _labels(gen, gen.randint(1, 6), shots + 1, shots + 10, order)
        support, val = sample_fewshot_val(labels, shots, seed=seed)
        assert support == sample_few_shot(labels, shots, seed=seed)
        assert not set(support) & set(val)
        assert len(val) == len(set(val))
        counts = {y: 0 for y in labels}
        for i in val:
            counts[labels[i]] += 1
        assert all(0 < v <= min(shots, 4) for v in counts.values())


def test_sample_fewshot_val_reference_stream() -> None:
    labels = [0] * 10 + [1] * 10
    random.seed(5)
    groups = {0: list(range(10)), 1: list(range(10, 20))}
    support = []
    for items in groups.values():
        support += random.sample(items, 3)
    val = []
    for items in groups.values():
        rest = [i for i in items if i not in support]
        val += random.sample(rest, 3)
    assert sample_fewshot_val(labels, 3, seed=5) == (support, val)


def test_draw_fewshot_val_strict() -> None:
    labels = [0] * 20 + [1] * 17
    draw_fewshot_val(labels, 16, seed=1, val_shots=1)  # 16 + 1 fits
    with pytest.raises(
        NotEnoughImagesError, match=r"16 shots \+ 4 validation images: class 1 has 17"
    ):
        draw_fewshot_val(labels, 16, seed=1)
    # repeat does not relax validation (it must be disjoint from the support set)
    with pytest.raises(NotEnoughImagesError):
        draw_fewshot_val(labels, 16, seed=1, repeat=True)
    s, v = draw_fewshot_val(labels, 16, seed=1, allow_fewer=True)
    assert len(s) == 32
    assert [labels[i] for i in v].count(1) == 1


def test_draw_coop_strict() -> None:
    train = [0] * 20 + [1] * 20
    val = [0] * 4 + [1] * 2
    with pytest.raises(NotEnoughImagesError, match=r"val: .*class 1 has 2 images"):
        draw_coop(train, val, 16, seed=1)
    assert draw_coop(train, val, 2, seed=1) == sample_coop(train, val, 2, seed=1)
