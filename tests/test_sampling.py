"""What a user of the few-shot draws sees: the exact indices of a seeded draw, the defaults, the
edge cases (short, empty, stray, unsorted and non-contiguous classes), and the error messages,
which name the split, the class, what was asked and found, and the flag that fixes it.

The draws are pinned against small re-implementations of the documented algorithms written here
with Python's global ``random`` (as the references use it); ``tests/data/test_fewshot.py`` already
checks ``sample_few_shot`` and ``sample_coop`` against Dassl's sampler.
"""

from __future__ import annotations

import random
import re
from typing import Any

import pytest

from fewclip.errors import FewclipError, InvalidTypeError, InvalidValueError
from fewclip.sampling import (
    NotEnoughImagesError,
    all_val_count,
    check_shots,
    draw_all,
    draw_coop,
    draw_fewshot_val,
    draw_support,
    sample_coop,
    sample_few_shot,
    sample_fewshot_val,
)

#: The ways out every "too few images" message ends with (what the user reads on the CLI).
WAYS = (
    "Ways out: -k all (every image of each class; uneven classes are fine), "
    "--repeat (sample with replacement, Tip-Adapter's choice; Python: repeat=True), "
    "--allow-fewer (take all images of the short classes, CoOp's choice; Python: "
    "allow_fewer=True), --protocol val-free (no validation images held out), or a smaller -k."
)
#: Under fewshot-val, --repeat alone does not help (validation images must be distinct).
WAYS_VAL = WAYS.replace("--repeat (sample", "--repeat with --protocol val-free (sample")
#: CoOp's draw samples without replacement: all the ways out but --repeat.
WAYS_COOP = WAYS.replace(
    "--repeat (sample with replacement, Tip-Adapter's choice; Python: repeat=True), ", ""
)


def _labels(sizes: dict[Any, int], seed: int = 0) -> list[Any]:
    """``sizes[y]`` items of each label ``y``, shuffled (first appearance ≠ sorted order)."""
    labels = [y for y, n in sizes.items() for _ in range(n)]
    random.Random(seed).shuffle(labels)
    return labels


def _groups(labels: list[Any]) -> list[list[int]]:
    """Indices per label, labels in order of first appearance, indices ascending."""
    order: list[Any] = []
    for y in labels:
        if y not in order:
            order.append(y)
    return [[i for i, z in enumerate(labels) if z == y] for y in order]


def ref_fewshot_val(
    labels: list[Any], shots: int, seed: int, val_shots: int = 4
) -> tuple[list[int], list[int]]:
    """The documented fewshot-val draw, with the global random stream: ``shots`` per class
    (``random.sample``), then ``min(shots, val_shots)`` of the rest of each class (all of it when
    fewer are left)."""
    random.seed(seed)
    groups = _groups(labels)
    support: list[int] = []
    for items in groups:
        support += random.sample(items, shots) if len(items) >= shots else items
    k = min(shots, val_shots)
    val: list[int] = []
    for items in groups:
        rest = [i for i in items if i not in support]
        val += random.sample(rest, k) if len(rest) >= k else rest
    return support, val


def ref_draw_all(labels: list[Any], seed: int, val_shots: int) -> tuple[list[int], list[int]]:
    """The documented ``shots=all`` draw: per class, ``min(val_shots, n // 5)`` validation items
    by ``random.sample``; the support is every other index in input order."""
    random.seed(seed)
    val: list[int] = []
    for items in _groups(labels):
        val += random.sample(items, min(val_shots, len(items) // 5))
    return [i for i in range(len(labels)) if i not in val], val


def _message(excinfo: pytest.ExceptionInfo[BaseException]) -> str:
    return str(excinfo.value)


# -- exact seeded draws ------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 7, 42])
def test_fewshot_val_exact_when_the_rest_just_fills_the_validation_set(seed: int) -> None:
    """8 images per class, K=4: the 4 left over are exactly the 4 validation images. They are
    still drawn with ``random.sample`` (so their order, and the stream for the next class, follow
    the reference)."""
    labels = _labels({"b": 8, "a": 8, 5: 8}, seed=seed)
    want = ref_fewshot_val(labels, 4, seed)
    assert sample_fewshot_val(labels, 4, seed=seed) == want
    assert draw_fewshot_val(labels, 4, seed=seed) == want


@pytest.mark.parametrize(("shots", "val_shots"), [(1, 4), (3, 2), (5, 4), (2, 1)])
def test_fewshot_val_exact_unsorted_noncontiguous_labels(shots: int, val_shots: int) -> None:
    labels = _labels({9: 12, 2: 10, 40: 15}, seed=shots)
    for seed in (1, 2, 3):
        want = ref_fewshot_val(labels, shots, seed, val_shots)
        got = sample_fewshot_val(labels, shots, seed=seed, val_shots=val_shots)
        assert got == want
        assert draw_fewshot_val(labels, shots, seed=seed, val_shots=val_shots) == want


def test_fewshot_val_default_val_shots_is_four() -> None:
    labels = _labels({0: 30, 1: 30})
    support, val = sample_fewshot_val(labels, 8, seed=1)
    assert (support, val) == ref_fewshot_val(labels, 8, 1, val_shots=4)
    assert len(val) == 8  # 4 per class
    assert draw_fewshot_val(labels, 8, seed=1) == (support, val)


def test_fewshot_val_takes_all_of_a_short_class_without_repeat_by_default() -> None:
    """Without ``repeat``, a class smaller than K gives all of its images to the support and
    nothing to validation (the lenient reference behaviour of ``sample_fewshot_val``)."""
    labels = [0, 1, 1, 1, 1, 1, 0, 1, 1]
    support, val = sample_fewshot_val(labels, 3, seed=4)
    assert (support, val) == ref_fewshot_val(labels, 3, 4)
    assert sorted(i for i in support if labels[i] == 0) == [0, 6]
    assert [labels[i] for i in val] == [1, 1, 1]


def test_draw_fewshot_val_repeat_with_allow_fewer_samples_short_class_with_replacement() -> None:
    """``allow_fewer`` lets a short class through; with ``repeat`` its support is still K images
    drawn with replacement (Tip-Adapter), exactly as ``sample_fewshot_val(repeat=True)``."""
    labels = [0] * 3 + [1] * 12
    for seed in (1, 2, 3):
        got = draw_fewshot_val(labels, 5, seed=seed, repeat=True, allow_fewer=True)
        assert got == sample_fewshot_val(labels, 5, seed=seed, repeat=True)
        support, _ = got
        assert [labels[i] for i in support].count(0) == 5
    without = draw_fewshot_val(labels, 5, seed=1, allow_fewer=True)
    assert [labels[i] for i in without[0]].count(0) == 3


@pytest.mark.parametrize("val_shots", [1, 2, 4])
def test_draw_all_exact(val_shots: int) -> None:
    labels = _labels({"dog": 12, "cat": 5, "owl": 23}, seed=val_shots)
    for seed in (1, 2, 3):
        assert draw_all(labels, seed=seed, val_shots=val_shots) == ref_draw_all(
            labels, seed, val_shots
        )


def test_draw_all_without_validation_is_every_index_in_order() -> None:
    labels = ["b", "a", "b", "c", "a"]
    assert draw_all(labels, seed=3) == ([0, 1, 2, 3, 4], [])
    assert draw_all([], seed=3) == ([], [])
    assert draw_all([], seed=3, val_shots=4) == ([], [])


def test_all_val_count_defaults_to_at_most_four() -> None:
    assert [all_val_count(n) for n in (0, 4, 5, 9, 10, 19, 20, 24, 25, 100)] == [
        0,
        0,
        1,
        1,
        2,
        3,
        4,
        4,
        4,
        4,
    ]
    assert all_val_count(25, 5) == 5
    assert all_val_count(100, 1) == 1


def test_empty_labels_give_empty_draws() -> None:
    assert sample_few_shot([], 3, seed=1) == []
    assert draw_support([], 3, seed=1) == []
    assert sample_fewshot_val([], 3, seed=1) == ([], [])
    assert draw_coop([], [], 3, seed=1) == ([], [])


def test_draw_coop_validation_needs_at_most_four_per_class() -> None:
    """CoOp takes min(K, 4) validation images: K=5 with four validation images a class is fine."""
    train = _labels({0: 6, 1: 5})
    val = _labels({0: 4, 1: 4}, seed=1)
    assert draw_coop(train, val, 5, seed=2) == sample_coop(train, val, 5, seed=2)
    with pytest.raises(NotEnoughImagesError, match=r"^val: 1 of 2 classes .* than 4 shots"):
        draw_coop(train, _labels({0: 4, 1: 3}), 5, seed=2)


# -- bad arguments ------------------------------------------------------------------------------


@pytest.mark.parametrize("shots", [0, -1, 2.0, True, "3", None])
def test_shots_must_be_a_positive_int(shots: Any) -> None:
    msg = f"^shots: expected a positive integer, found {re.escape(repr(shots))}$"
    for draw in (
        lambda: sample_few_shot([0, 1], shots, seed=1),
        lambda: sample_coop([0, 1], [0, 1], shots, seed=1),
        lambda: sample_fewshot_val([0, 1], shots, seed=1),
        lambda: draw_support([0, 1], shots, seed=1),
        lambda: draw_coop([0, 1], [0, 1], shots, seed=1),
        lambda: draw_fewshot_val([0, 1], shots, seed=1),
    ):
        with pytest.raises(InvalidValueError, match=msg):
            draw()


@pytest.mark.parametrize("val_shots", [0, -2, 1.5, False])
def test_val_shots_must_be_a_positive_int(val_shots: Any) -> None:
    msg = f"^val_shots: expected a positive integer, found {re.escape(repr(val_shots))}$"
    labels = [0] * 10
    with pytest.raises(InvalidValueError, match=msg):
        sample_fewshot_val(labels, 2, seed=1, val_shots=val_shots)
    with pytest.raises(InvalidValueError, match=msg):
        draw_fewshot_val(labels, 2, seed=1, val_shots=val_shots)
    with pytest.raises(InvalidValueError, match=msg):
        draw_all(labels, seed=1, val_shots=val_shots)


@pytest.mark.parametrize("seed", ["1", 1.0, True, None, b"1"])
def test_seed_must_be_an_int(seed: Any) -> None:
    msg = f"^seed: expected an int, found {re.escape(repr(seed))}$"
    for draw in (
        lambda: sample_few_shot([0, 1], 1, seed=seed),
        lambda: sample_coop([0, 1], [0, 1], 1, seed=seed),
        lambda: sample_fewshot_val([0, 0, 1, 1], 1, seed=seed),
        lambda: draw_all([0, 1], seed=seed),
    ):
        with pytest.raises(InvalidTypeError, match=msg):
            draw()


def test_not_enough_images_is_a_value_error_and_a_fewclip_error() -> None:
    with pytest.raises(NotEnoughImagesError) as e:
        check_shots([0, 1, 1], 2)
    assert isinstance(e.value, ValueError)
    assert isinstance(e.value, FewclipError)


# -- too few images: the messages -----------------------------------------------------------------


def test_check_shots_is_strict_by_default_and_names_train() -> None:
    with pytest.raises(NotEnoughImagesError) as e:
        check_shots([0, 0, 0, 1, 1], 3)
    assert _message(e) == (
        "train: 1 of 2 classes have fewer images than 3 shots: class 1 has 2 images. "
        "The largest -k every class can give is 2. " + WAYS
    )
    check_shots([0, 0, 0, 1, 1], 3, allow_fewer=True)
    check_shots([0, 0, 0, 1, 1], 3, repeat=True)
    check_shots([0, 0, 0, 1, 1], 2)


def test_short_class_named_with_its_classname() -> None:
    labels = [1, 0, 1, 1, 2, 1, 0, 1, 1]
    with pytest.raises(NotEnoughImagesError) as e:
        draw_support(labels, 4, seed=1, classnames=["cat", "dog", "owl"])
    assert _message(e) == (
        "train: 2 of 3 classes have fewer images than 4 shots: class 0 ('cat') has 2 images; "
        "class 2 ('owl') has 1 image. The largest -k every class can give is 1. " + WAYS
    )


def test_label_outside_the_classnames_is_named_by_its_value() -> None:
    labels = [0] * 3 + [1] * 3 + [2] * 3 + [3] + [-1]
    with pytest.raises(NotEnoughImagesError, match=r": class 3 has 1 image; class -1 has 1 "):
        check_shots(labels, 2, classnames=["a", "b", "c"])


def test_draw_support_split_name_appears_in_the_message() -> None:
    with pytest.raises(NotEnoughImagesError, match=r"^test: 1 of 2 classes have fewer"):
        draw_support([0, 0, 1], 2, seed=1, where="test")
    with pytest.raises(NotEnoughImagesError, match=r"^train: 1 of 2 classes have fewer"):
        draw_support([0, 0, 1], 2, seed=1)
    with pytest.raises(NotEnoughImagesError, match=r"^train: 1 of 2 classes have fewer"):
        draw_coop([0, 0, 1], [0, 1], 2, seed=1)


def test_draw_fewshot_val_message_counts_the_validation_images() -> None:
    labels = _labels({"x": 20, "y": 17})
    with pytest.raises(NotEnoughImagesError) as e:
        draw_fewshot_val(labels, 16, seed=1)
    assert _message(e) == (
        "train: 1 of 2 classes have fewer images than 16 shots + 4 validation images: "
        "class 'y' has 17 images. The largest -k every class can give is 13. " + WAYS_VAL
    )
    with pytest.raises(NotEnoughImagesError, match=r"^val: 1 of 2 classes .* 2 validation images"):
        draw_fewshot_val(labels, 16, seed=1, val_shots=2, where="val")


@pytest.mark.parametrize(
    ("smallest", "shots", "largest"),
    [(2, 2, 1), (3, 2, 1), (4, 3, 2), (7, 4, 3), (8, 5, 4), (9, 6, 5), (17, 16, 13)],
)
def test_draw_fewshot_val_suggests_the_largest_k_that_fits(
    smallest: int, shots: int, largest: int
) -> None:
    """The suggested K is the largest with K + min(K, 4) ≤ the smallest class; it does fit."""
    labels = _labels({0: 30, 1: smallest})
    with pytest.raises(NotEnoughImagesError, match=rf"can give is {largest}\. Ways out: "):
        draw_fewshot_val(labels, shots, seed=1)
    draw_fewshot_val(labels, largest, seed=1)
    with pytest.raises(NotEnoughImagesError):
        draw_fewshot_val(labels, largest + 1, seed=1)


def test_no_largest_k_suggested_when_no_k_fits() -> None:
    with pytest.raises(NotEnoughImagesError) as e:
        draw_fewshot_val([0] * 10 + [1], 1, seed=1)
    assert _message(e) == (
        "train: 1 of 2 classes have fewer images than 1 shot + 1 validation image: "
        "class 1 has 1 image. " + WAYS_VAL
    )


def _short_classes_message(n_short: int) -> str:
    labels = [0] * 5 + [c for c in range(1, n_short + 1) for _ in range(2)]
    with pytest.raises(NotEnoughImagesError) as e:
        check_shots(labels, 3)
    return _message(e)


def test_at_most_five_short_classes_are_listed() -> None:
    listed = "; ".join(f"class {c} has 2 images" for c in range(1, 6))
    assert _short_classes_message(5) == (
        f"train: 5 of 6 classes have fewer images than 3 shots: {listed}. "
        "The largest -k every class can give is 2. " + WAYS
    )
    six = _short_classes_message(6)
    assert six.startswith(
        f"train: 6 of 7 classes have fewer images than 3 shots: {listed} (and 1 more). "
    )
    assert "class 6" not in six
    assert six.endswith(" The largest -k every class can give is 2. " + WAYS)


# -- empty classes ------------------------------------------------------------------------------


def test_empty_class_is_an_error_even_with_allow_fewer_or_repeat() -> None:
    names = ["cat", "dog", "owl"]
    labels = [0, 0, 2, 2, 0]
    want = "train: 1 of 3 classes are empty: class 1 ('dog') has no images in train"
    for kwargs in ({}, {"allow_fewer": True}, {"repeat": True}):
        with pytest.raises(NotEnoughImagesError) as e:
            check_shots(labels, 1, classnames=names, **kwargs)
        assert _message(e) == want
        with pytest.raises(NotEnoughImagesError) as e:
            draw_support(labels, 1, seed=1, classnames=names, **kwargs)
        assert _message(e) == want
    with pytest.raises(NotEnoughImagesError, match=f"^{re.escape(want)}$"):
        draw_fewshot_val(labels * 4, 1, seed=1, classnames=names, allow_fewer=True)
    with pytest.raises(NotEnoughImagesError, match=f"^{re.escape(want)}$"):
        draw_all(labels * 4, seed=1, classnames=names)
    # every class present: fine
    assert draw_support([0, 1, 2], 1, seed=1, classnames=names) == [0, 1, 2]


def test_empty_class_message_names_the_split() -> None:
    names = ["cat", "dog", "owl"]
    with pytest.raises(
        NotEnoughImagesError, match=r"^test: .*class 0 \('cat'\) has no images in test$"
    ):
        draw_support([1, 2], 1, seed=1, classnames=names, where="test")
    with pytest.raises(
        NotEnoughImagesError, match=r"^val: .*class 0 \('cat'\) has no images in val$"
    ):
        draw_fewshot_val([1, 2] * 5, 1, seed=1, classnames=names, where="val")
    with pytest.raises(
        NotEnoughImagesError, match=r"^test: .*class 0 \('cat'\) has no images in test$"
    ):
        draw_all([1, 2] * 5, seed=1, classnames=names, where="test")
    with pytest.raises(
        NotEnoughImagesError, match=r"^val: .*class 0 \('cat'\) has no images in val$"
    ):
        draw_all([1, 2] * 5, seed=1, val_shots=1, classnames=names, where="val")


def test_draw_coop_checks_both_splits_for_empty_classes() -> None:
    names = ["cat", "dog"]
    with pytest.raises(NotEnoughImagesError) as e:
        draw_coop([0, 0], [0, 1], 1, seed=1, classnames=names)
    assert _message(e) == "train: 1 of 2 classes are empty: class 1 ('dog') has no images in train"
    with pytest.raises(NotEnoughImagesError) as e:
        draw_coop([0, 1], [1, 1], 1, seed=1, classnames=names, allow_fewer=True)
    assert _message(e) == "val: 1 of 2 classes are empty: class 0 ('cat') has no images in val"


def test_at_most_five_empty_classes_are_listed() -> None:
    def message(n_classes: int) -> str:
        with pytest.raises(NotEnoughImagesError) as e:
            check_shots([0, 0], 1, classnames=[f"c{i}" for i in range(n_classes)])
        return _message(e)

    listed = "; ".join(f"class {c} ('c{c}') has no images in train" for c in range(1, 6))
    assert message(6) == f"train: 5 of 6 classes are empty: {listed}"
    assert message(7) == f"train: 6 of 7 classes are empty: {listed} (and 1 more)"
    assert "class 6" not in message(7)


# -- shots=all with a validation hold-out -------------------------------------------------------

_ALL_WAY_OUT = (
    ". Use --protocol val-free (fixed hyper-parameters, nothing held out), or add images."
)
_ALL_HEAD = (
    "-k all with a few-shot validation set holds out one image per 5 of a class, so each class "
    "needs at least 5 images; "
)


def test_draw_all_small_class_message() -> None:
    labels = _labels({0: 7, 1: 3, 2: 4})
    with pytest.raises(NotEnoughImagesError) as e:
        draw_all(labels, seed=1, val_shots=4, classnames=["cat", "dog", "owl"])
    want = "class 1 ('dog') has 3; class 2 ('owl') has 4"
    # the order of the short classes is their first appearance in the labels
    if labels.index(2) < labels.index(1):
        want = "class 2 ('owl') has 4; class 1 ('dog') has 3"
    assert _message(e) == "train: " + _ALL_HEAD + want + _ALL_WAY_OUT
    with pytest.raises(NotEnoughImagesError, match=r"^val: -k all .*; class 'z' has 4\. Use"):
        draw_all(["z"] * 4 + ["w"] * 5, seed=1, val_shots=2, where="val")
    # without a validation set, small classes are fine
    assert draw_all(labels, seed=1)[0] == list(range(14))


def test_draw_all_lists_at_most_five_small_classes() -> None:
    def message(n_small: int) -> str:
        labels = [0] * 5 + [c for c in range(1, n_small + 1) for _ in range(4)]
        with pytest.raises(NotEnoughImagesError) as e:
            draw_all(labels, seed=1, val_shots=1)
        return _message(e)

    listed = "; ".join(f"class {c} has 4" for c in range(1, 6))
    assert message(5) == "train: " + _ALL_HEAD + listed + _ALL_WAY_OUT
    six = message(6)
    assert six.startswith("train: " + _ALL_HEAD + listed + " (and 1 more). ")
    assert "class 6" not in six
    assert six.endswith(_ALL_WAY_OUT)


def test_the_suggested_k_follows_val_shots() -> None:
    """With 1 validation image a class, 10 images fit K = 9 (9 + 1), and the message says so;
    the suggestion is a draw that works."""
    with pytest.raises(NotEnoughImagesError, match="The largest -k every class can give is 9"):
        draw_fewshot_val([0] * 10, 16, seed=0, val_shots=1)
    support, val = draw_fewshot_val([0] * 10, 9, seed=0, val_shots=1)
    assert (len(support), len(val)) == (9, 1)


def test_coop_draws_do_not_suggest_repeat() -> None:
    """CoOp's draw samples without replacement (repeat is refused there), so its message
    offers the other ways out only."""
    with pytest.raises(NotEnoughImagesError) as e:
        draw_coop([0] * 3 + [1] * 3, [0, 1], 4, seed=0)
    message = str(e.value)
    assert "--repeat" not in message
    assert "--allow-fewer" in message
    assert "a smaller -k" in message


def test_coop_messages_word_for_word_for_both_splits() -> None:
    with pytest.raises(NotEnoughImagesError) as e:
        draw_coop([0] * 3 + [1] * 3, [0, 1] * 4, 4, seed=0)
    assert str(e.value) == (
        "train: 2 of 2 classes have fewer images than 4 shots: class 0 has 3 images; class 1 "
        f"has 3 images. The largest -k every class can give is 3. {WAYS_COOP}"
    )
    with pytest.raises(NotEnoughImagesError) as e:  # the val split: min(K, 4) a class
        draw_coop([0] * 5 + [1] * 5, [0, 1, 1], 2, seed=0)
    assert str(e.value) == (
        "val: 1 of 2 classes have fewer images than 2 shots: class 0 has 1 image. "
        f"The largest -k every class can give is 1. {WAYS_COOP}"
    )


def test_check_shots_suggests_k_for_four_validation_images_by_default() -> None:
    """A class of 9 images holds K = 5 with min(5, 4) = 4 validation images (5 + 4 = 9)."""
    with pytest.raises(NotEnoughImagesError) as e:
        check_shots([0] * 9 + [1] * 12, 8, reserve=4)
    assert str(e.value) == (
        "train: 1 of 2 classes have fewer images than 8 shots + 4 validation images: class 0 "
        f"has 9 images. The largest -k every class can give is 5. {WAYS_VAL}"
    )
