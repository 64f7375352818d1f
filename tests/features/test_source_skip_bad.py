"""DatasetSource with undecodable images: the split is seen without them, rows stay aligned."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import fewclip.backbones as fb
from fewclip.data import load_folder
from fewclip.features import extract
from fewclip.features.source import DatasetSource
from fewclip.imageio import BadImageError
from fewclip.protocol import Protocol
from fewclip.testing.images import make_shapes_dataset, write_bad_images


@pytest.fixture(scope="module")
def backbone() -> fb.Backbone:
    return fb.load("fewclip-tiny-vit")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = make_shapes_dataset(
        tmp_path / "d", classes=("red_circle", "blue_square"), per_class={"train": 5}, size=32
    )
    # sorted file order puts these between and after the good ones
    write_bad_images(root / "train" / "red_circle", ["broken.jpg", "truncated.png"])
    write_bad_images(root / "train" / "blue_square", ["empty.jpg"])
    return root


@pytest.mark.parametrize("limit", [20_000, 3])  # whole-split extraction / decode scan + subsets
def test_clean_split_features_match_a_direct_extraction(
    folder: Path, backbone: fb.Backbone, tmp_path: Path, limit: int
) -> None:
    ds = load_folder(folder, seed=0, train_fraction=0.99, val_fraction=0.0)
    src = DatasetSource(
        ds, backbone, store=tmp_path / "s", views=1, skip_bad=True, whole_split_limit=limit
    )
    labels = src.labels("train")
    assert len(labels) == len(ds.split("train")) - 3
    skipped = sorted(Path(r["path"]).name for r in src.skipped_images())
    assert skipped == ["broken.jpg", "empty.jpg", "truncated.png"]
    good = [p for p in src.original.split("train").abspaths() if p.suffix == ".png"]
    good = [p for p in good if p.name != "truncated.png"]
    assert [src.dataset.split("train").abspath(i) for i in range(len(labels))] == good
    direct = extract(backbone, [str(p) for p in good])
    index = [4, 0, 7]
    fs = src.features("train", index, views=True)
    torch.testing.assert_close(fs.features, direct.features[index])
    assert fs.labels.tolist() == labels[index].tolist()
    assert fs.views is not None
    assert fs.views.shape == (1, 3, backbone.embed_dim)
    plan = Protocol("val-free").plan_source(src, shots=4, seed=1)
    assert len(plan.support) == 8


def test_without_skip_bad_the_first_look_at_a_split_raises(folder: Path, backbone, tmp_path):
    ds = load_folder(folder, seed=0, train_fraction=0.99, val_fraction=0.0)
    src = DatasetSource(ds, backbone, store=tmp_path / "s", views=0)
    with pytest.raises(BadImageError, match="(?s)3 of 13 images.*skip_bad=True"):
        src.labels("train")
