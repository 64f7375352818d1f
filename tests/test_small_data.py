"""Own, small and uneven data: ``shots="all"``, the default choice, and errors that name the
command-line flags that work."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from fewclip.adapter import choose_defaults
from fewclip.data import load_folder, plan_dataset
from fewclip.data.fewshot import ALL, NotEnoughImagesError, all_val_count, draw_all
from fewclip.protocol import Protocol
from fewclip.testing.images import make_shapes_dataset

UNEVEN = [0] * 5 + [1] * 12 + [2] * 23 + [0] * 2  # classes of 7, 12 and 23 images, interleaved


def test_all_val_count_is_one_per_five_at_most_four() -> None:
    assert [all_val_count(n) for n in (1, 4, 5, 9, 10, 19, 20, 100)] == [0, 0, 1, 1, 2, 3, 4, 4]
    assert all_val_count(100, val_shots=2) == 2


def test_draw_all_holds_out_a_seeded_disjoint_validation_set() -> None:
    support, val = draw_all(UNEVEN, seed=1, val_shots=4)
    assert not set(support) & set(val)
    assert sorted(support + val) == list(range(len(UNEVEN)))
    assert support == sorted(support)
    assert Counter(UNEVEN[i] for i in val) == {0: 1, 1: 2, 2: 4}
    assert draw_all(UNEVEN, seed=1, val_shots=4) == (support, val)
    assert draw_all(UNEVEN, seed=2, val_shots=4)[1] != val
    everything, none = draw_all(UNEVEN, seed=1)
    assert everything == list(range(len(UNEVEN)))
    assert none == []


def test_draw_all_with_validation_refuses_a_class_of_fewer_than_five() -> None:
    with pytest.raises(NotEnoughImagesError, match=r"'tiny'\) has 3.*--protocol val-free"):
        draw_all([0, 0, 0, 1, 1, 1, 1, 1], seed=1, val_shots=4, classnames=["tiny", "ok"])


@pytest.mark.parametrize(
    ("protocol", "val_split", "val_n"),
    [("fewshot-val", "train", 7), ("val-free", None, 0), ("full-val", "val", None)],
)
def test_protocol_plans_all_shots(protocol: str, val_split: str | None, val_n: int | None) -> None:
    plan = Protocol(protocol).plan(UNEVEN, shots=ALL, seed=1, val_labels=[0, 1, 2])
    assert plan.shots == "all"
    held = (
        set(plan.val.indices or ()) if plan.val is not None and plan.val.split == "train" else set()
    )
    assert set(plan.support.indices or ()) == set(range(len(UNEVEN))) - held
    if val_split is None:
        assert plan.val is None
    else:
        assert plan.val is not None
        assert plan.val.split == val_split
        if val_n is not None:
            assert len(plan.val) == val_n
    assert plan.meta["train_per_class"] == [7, 23]


def test_not_enough_images_names_class_counts_and_cli_flags() -> None:
    with pytest.raises(NotEnoughImagesError) as e:
        Protocol("fewshot-val").plan(UNEVEN, shots=16, seed=1, classnames=["a", "b", "c"])
    msg = str(e.value)
    assert "class 0 ('a') has 7 images" in msg
    assert "class 1 ('b') has 12 images" in msg
    assert "largest -k every class can give is 3" in msg
    for flag in ("-k all", "--repeat", "--allow-fewer", "--protocol val-free"):
        assert flag in msg


def _folder(tmp_path: Path, per_class: dict[str, int]) -> Path:
    return make_shapes_dataset(
        tmp_path / "d", classes=("red_circle", "blue_square"), per_class=per_class, size=24
    )


def test_choose_defaults_for_own_folders(tmp_path: Path) -> None:
    big = load_folder(_folder(tmp_path / "a", {"train": 6, "test": 2}))
    assert choose_defaults(big, None, None)[:2] == ("all", "fewshot-val")
    small = load_folder(_folder(tmp_path / "b", {"train": 3, "test": 2}))
    k, proto, why = choose_defaults(small, None, None)
    assert (k, proto) == ("all", "val-free")
    assert "too few images" in why
    with_val = load_folder(_folder(tmp_path / "c", {"train": 3, "val": 1, "test": 1}))
    assert choose_defaults(with_val, None, None)[:2] == ("all", "full-val")
    assert choose_defaults(small, 2, None)[:2] == (2, "val-free")
    assert choose_defaults(big, 1, None)[:2] == (1, "fewshot-val")
    assert choose_defaults(big, 4, "coop-val") == (4, "coop-val", "")


def test_a_val_split_missing_a_class_is_not_chosen(tmp_path: Path) -> None:
    """The automatic 50/20/30 split gives a class of 3 images no val image: full-val would
    fail on it, so the default falls back (to val-free here: that class cannot spare one)."""
    from fewclip.data import load_folder

    root = make_shapes_dataset(
        tmp_path / "m", classes=("red_circle", "blue_square"), per_class={"train": 8}, size=24
    )
    for p in sorted((root / "train" / "red_circle").glob("*.png"))[3:]:
        p.unlink()
    ds = load_folder(root / "train")
    assert ds.has_split("val")
    assert set(ds.split("val").labels) != {0, 1}
    k, proto, _ = choose_defaults(ds, None, None)
    assert (k, proto) == ("all", "val-free")
    plan_dataset(proto, ds, shots=k, seed=1)  # and it plans
