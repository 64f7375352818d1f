"""User datasets: image folders, manifests, Hugging Face datasets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fewclip.data import DatasetError, load, load_folder, load_hf, load_manifest, stratified_split


def _tree(fk: Any, base: Path, classes: dict[str, int], prefix: str = "") -> None:
    for c, n in classes.items():
        for i in range(n):
            fk.write_image(base / prefix / c / f"{i:02d}.png", i)


def test_folder_with_split_subfolders(tmp_path: Path, fk: Any) -> None:
    _tree(fk, tmp_path, {"golden_retriever": 3, "tabby": 2}, "train")
    _tree(fk, tmp_path, {"golden_retriever": 1, "tabby": 1}, "test")
    ds = load_folder(tmp_path)
    assert ds.classnames == ("golden retriever", "tabby")
    assert set(ds.splits) == {"train", "test"}
    assert ds.train.paths[0] == "train/golden_retriever/00.png"
    assert ds.train.labels == (0, 0, 0, 1, 1)
    assert ds.meta["split"] == "folders"


def test_folder_split_folder_with_unknown_class(tmp_path: Path, fk: Any) -> None:
    _tree(fk, tmp_path, {"a": 2}, "train")
    _tree(fk, tmp_path, {"b": 1}, "val")
    with pytest.raises(DatasetError, match=r"class folder 'b' does not exist in .*train"):
        load_folder(tmp_path)


def test_folder_without_train(tmp_path: Path, fk: Any) -> None:
    _tree(fk, tmp_path, {"a": 2}, "test")
    with pytest.raises(DatasetError, match="found test/ but no train/"):
        load_folder(tmp_path)


def test_folder_split_aliases_are_read_not_skipped(tmp_path: Path, fk: Any) -> None:
    _tree(fk, tmp_path, {"a": 3, "b": 2}, "Training")
    _tree(fk, tmp_path, {"a": 1, "b": 2}, "validation")
    _tree(fk, tmp_path, {"a": 1, "b": 1}, "testing")
    ds = load_folder(tmp_path)
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 5, "val": 3, "test": 2}
    assert ds.split("val").paths[0] == "validation/a/00.png"


def test_folder_refuses_what_it_would_have_ignored(tmp_path: Path, fk: Any) -> None:
    _tree(fk, tmp_path, {"a": 2}, "train")
    _tree(fk, tmp_path, {"a": 1}, "unlabeled")
    with pytest.raises(DatasetError, match=r"unlabeled/ next to the split folders train/"):
        load_folder(tmp_path)
    _tree(fk, tmp_path / "two", {"a": 2}, "train")
    _tree(fk, tmp_path / "two", {"a": 1}, "val")
    _tree(fk, tmp_path / "two", {"a": 1}, "dev")
    with pytest.raises(DatasetError, match=r"both (val/ and dev/|dev/ and val/) are val folders"):
        load_folder(tmp_path / "two")


def test_flat_folder_stratified_split(tmp_path: Path, fk: Any) -> None:
    _tree(fk, tmp_path, {"cat": 10, "dog": 7})
    (tmp_path / "dog" / "sub").mkdir()
    fk.write_image(tmp_path / "dog" / "sub" / "deep.jpg")  # nested images belong to the class
    (tmp_path / "cat" / "notes.txt").write_text("x")
    with pytest.warns(UserWarning, match="skipped 1 files"):
        ds = load_folder(tmp_path, seed=3)
    counts = {s: ds.split(s).class_counts() for s in ds.splits}
    assert counts == {"train": [5, 4], "val": [2, 2], "test": [3, 2]}
    with pytest.warns(UserWarning, match="skipped 1 files"):
        again = load_folder(tmp_path, seed=3)
    assert again.train.paths == ds.train.paths
    with pytest.warns(UserWarning, match="skipped 1 files"):
        other = load_folder(tmp_path, seed=4)
    assert other.train.paths != ds.train.paths
    all_paths = sorted(p for s in ds.splits.values() for p in s.paths)
    assert len(all_paths) == 18 == len(set(all_paths))
    assert "dog/sub/deep.jpg" in all_paths


def test_stratified_split_too_small() -> None:
    parts = stratified_split([0, 0, 0, 1, 1], seed=0, classnames=["a", "b"])
    assert {k: len(v) for k, v in parts.items()} == {"train": 3, "val": 0, "test": 2}
    with pytest.raises(DatasetError, match="class 'b' has 1 image, too few"):
        stratified_split([0, 0, 0, 1], seed=0, classnames=["a", "b"])


def test_classnames_json_overrides(tmp_path: Path, fk: Any) -> None:
    _tree(fk, tmp_path, {"n001": 2, "n002": 2}, "train")
    (tmp_path / "classnames.json").write_text(json.dumps({"n002": "tiger shark"}))
    ds = load_folder(tmp_path)
    assert ds.classnames == ("n001", "tiger shark")
    (tmp_path / "classnames.json").write_text(json.dumps(["tench", "goldfish"]))
    assert load_folder(tmp_path).classnames == ("tench", "goldfish")
    (tmp_path / "classnames.json").write_text(json.dumps(["tench"]))
    with pytest.raises(DatasetError, match="classnames.json: a list must give one name per class"):
        load_folder(tmp_path)
    (tmp_path / "classnames.json").write_text(json.dumps({"n003": "x"}))
    with pytest.raises(DatasetError, match=r"keys \['n003'\] match no class"):
        load_folder(tmp_path)


def test_csv_manifest_with_split(tmp_path: Path, fk: Any) -> None:
    for i in range(4):
        fk.write_image(tmp_path / "img" / f"{i}.jpg")
    m = tmp_path / "data.csv"
    m.write_text(
        "path,label,split\nimg/0.jpg,sea_lion,train\nimg/1.jpg,cat,train\n"
        "img/2.jpg,cat,validation\nimg/3.jpg,sea_lion,test\n"
    )
    ds = load_manifest(m)
    assert ds.classnames == ("cat", "sea lion")
    assert ds.train.paths == ("img/0.jpg", "img/1.jpg")
    assert ds.train.labels == (1, 0)
    assert ds.val.paths == ("img/2.jpg",)
    assert ds.test.labels == (1,)
    assert load(m).classnames == ds.classnames


def test_jsonl_manifest_int_labels_and_stratified(tmp_path: Path, fk: Any) -> None:
    rows = []
    for i in range(12):
        fk.write_image(tmp_path / f"{i}.png")
        rows.append(json.dumps({"path": f"{i}.png", "label": [2, 10][i % 2]}))
    m = tmp_path / "m.jsonl"
    m.write_text("\n".join(rows) + "\n")
    ds = load_manifest(m, seed=1)
    assert ds.classnames == ("2", "10")  # numeric order, not "10" < "2"
    assert {s: len(v) for s, v in ds.splits.items()} == {"train": 6, "val": 2, "test": 4}
    (tmp_path / "classnames.json").write_text(json.dumps({"2": "two", "10": "ten"}))
    assert load_manifest(m, seed=1).classnames == ("two", "ten")


def test_manifest_root_option(tmp_path: Path, fk: Any) -> None:
    fk.write_image(tmp_path / "imgs" / "a.jpg")
    fk.write_image(tmp_path / "imgs" / "b.jpg")
    (tmp_path / "meta").mkdir()
    m = tmp_path / "meta" / "m.csv"
    m.write_text("path,label,split\na.jpg,x,train\nb.jpg,x,test\n")
    ds = load_manifest(m, root=tmp_path / "imgs")
    assert ds.train.abspath(0) == tmp_path / "imgs" / "a.jpg"


def test_hf_dataset(fk: Any) -> None:
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    imgs = [Image.new("RGB", (8, 8), (i * 20, 0, 0)) for i in range(10)]
    feats = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["sea_lion", "cat"])}
    )
    train = datasets.Dataset.from_dict({"image": imgs[:8], "label": [0, 1] * 4}, features=feats)
    test = datasets.Dataset.from_dict({"image": imgs[8:], "label": [0, 1]}, features=feats)
    ds = load_hf(datasets.DatasetDict({"train": train, "test": test}))
    assert ds.classnames == ("sea lion", "cat")
    assert len(ds.train) == 8
    assert len(ds.test) == 2
    assert ds.train.open(0).size == (8, 8)
    with pytest.raises(DatasetError, match="not mapped"):
        load_hf(datasets.DatasetDict({"train": train, "extra": test}))


def test_hf_dataset_from_local_folder(tmp_path: Path, fk: Any) -> None:
    """A path goes through ``datasets.load_dataset("imagefolder")``: offline, local files only."""
    pytest.importorskip("datasets")
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("red_fox", "owl"):
            for i in range(n):
                fk.write_image(tmp_path / "hf" / split / cls / f"{i}.png")
    ds = load_hf(tmp_path / "hf")
    assert ds.classnames == ("owl", "red fox")
    assert len(ds.train) == 6
    assert len(ds.test) == 4
    assert sorted(ds.train.labels) == [0, 0, 0, 1, 1, 1]
    assert ds.test.open(0).mode == "RGB"
