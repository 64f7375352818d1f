"""Bad input gets a clear error that names the file or entry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fewclip.data import (
    DatasetError,
    NotEnoughImagesError,
    draw_support,
    load_benchmark,
    load_folder,
    load_manifest,
    read_coop_split,
    safe_relpath,
    sample_few_shot,
)


def _split_path(root: Path) -> Path:
    return root / "dtd" / "split_zhou_DescribableTextures.json"


def _edit(root: Path, fn: Any) -> Path:
    p = _split_path(root)
    data = json.loads(p.read_text())
    fn(data)
    p.write_text(json.dumps(data))
    return p


def test_split_file_lists_missing_images(fresh_data: Any) -> None:
    root, _ = fresh_data("dtd")
    p = _edit(root, lambda d: d["test"].append(["banded/nope.jpg", 0, "banded"]))
    with pytest.raises(DatasetError) as err:
        load_benchmark("dtd", root)
    msg = str(err.value)
    assert str(p) in msg
    assert "1 listed images do not exist" in msg
    assert "banded/nope.jpg" in msg
    assert "test[9]" in msg
    # skipping the existence check reads it
    assert len(load_benchmark("dtd", root, verify_files=False).test) == 10


def test_labels_disagree_with_class_names(fresh_data: Any) -> None:
    root, _ = fresh_data("dtd")
    p = _edit(root, lambda d: d["val"][1].__setitem__(2, "striped"))
    with pytest.raises(
        DatasetError, match=r"val\[1\]: label 1 is named 'striped' here but 'blotchy'"
    ) as err:
        load_benchmark("dtd", root)
    assert str(p) in str(err.value)


def test_one_class_name_two_labels(fresh_data: Any) -> None:
    root, _ = fresh_data("dtd")
    _edit(root, lambda d: d["train"][1].__setitem__(2, "banded"))
    with pytest.raises(DatasetError, match="class 'banded' has label 1 here but 0"):
        load_benchmark("dtd", root)


def test_label_gap(fresh_data: Any) -> None:
    root, _ = fresh_data("dtd")

    def shift(d: dict[str, Any]) -> None:
        for s in ("train", "val", "test"):
            for e in d[s]:
                if e[1] == 2:
                    e[1] = 5

    _edit(root, shift)
    with pytest.raises(DatasetError, match=r"labels must be 0\.\.5 without gaps; labels 2, 3, 4"):
        load_benchmark("dtd", root)


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("../outside.jpg", "escapes the dataset root"),
        ("banded/../../x.jpg", "escapes the dataset root"),
        ("/etc/passwd", "is absolute"),
        ("C:\\images\\x.jpg", "is absolute"),
        ("\\\\server\\share\\x.jpg", "is absolute"),
    ],
)
def test_path_escaping_the_root(fresh_data: Any, bad: str, why: str) -> None:
    root, _ = fresh_data("dtd")
    _edit(root, lambda d: d["train"][3].__setitem__(0, bad))
    with pytest.raises(DatasetError) as err:
        load_benchmark("dtd", root)
    msg = str(err.value)
    assert why in msg
    assert "train[3]" in msg
    assert "split_zhou_DescribableTextures.json" in msg


def test_safe_relpath_accepts_normal_paths() -> None:
    assert safe_relpath("a/b/c.jpg", where="x") == "a/b/c.jpg"
    assert safe_relpath("a\\b.jpg", where="x") == "a/b.jpg"
    with pytest.raises(DatasetError, match="empty path"):
        safe_relpath("", where="x")
    with pytest.raises(DatasetError, match="expected a relative path string"):
        safe_relpath(3, where="x")


def test_malformed_entries(fresh_data: Any) -> None:
    root, _ = fresh_data("dtd")
    _edit(root, lambda d: d["train"].append(["banded/train_00.jpg", "0", "banded"]))
    with pytest.raises(DatasetError, match=r"train\[12\]: label must be a non-negative int"):
        load_benchmark("dtd", root)
    _edit(root, lambda d: d["train"].__setitem__(12, ["banded/train_00.jpg", 0]))
    with pytest.raises(DatasetError, match=r"train\[12\]: expected \[path, label, classname\]"):
        load_benchmark("dtd", root)
    _edit(root, lambda d: d.pop("val"))
    with pytest.raises(DatasetError, match=r"missing split\(s\) \['val'\]"):
        load_benchmark("dtd", root)
    _split_path(root).write_text("{not json")
    with pytest.raises(DatasetError, match="not a valid JSON split file"):
        load_benchmark("dtd", root)


def test_empty_class_in_split_file(fresh_data: Any) -> None:
    root, _ = fresh_data("dtd")
    _edit(root, lambda d: d.__setitem__("train", [e for e in d["train"] if e[1] != 1]))
    with pytest.raises(DatasetError, match=r"classes without training images: 1 \('blotchy'\)"):
        load_benchmark("dtd", root)


def test_fgvc_unknown_variant(fresh_data: Any) -> None:
    root, _ = fresh_data("fgvc_aircraft")
    f = root / "fgvc_aircraft" / "images_variant_test.txt"
    f.write_text(f.read_text() + "1234567 Boeing 999\n")
    with pytest.raises(DatasetError, match=r"images_variant_test.txt:10: variant 'Boeing 999'"):
        load_benchmark("fgvc_aircraft", root)


def test_fgvc_missing_image(fresh_data: Any) -> None:
    root, _ = fresh_data("fgvc_aircraft")
    (root / "fgvc_aircraft" / "images" / "1000001.jpg").unlink()
    with pytest.raises(DatasetError, match=r"1 images listed .* train\[1\] '1000001.jpg'"):
        load_benchmark("fgvc_aircraft", root)


def test_imagenet_folder_mismatch_and_unknown_wnid(fresh_data: Any, fk: Any) -> None:
    root, _ = fresh_data("imagenet")
    fk.write_image(root / "imagenet" / "images" / "val" / "n99999999" / "x.JPEG")
    with pytest.raises(DatasetError, match="only in val: n99999999"):
        load_benchmark("imagenet", root)
    fk.write_image(root / "imagenet" / "images" / "train" / "n99999999" / "x.JPEG")
    with pytest.raises(DatasetError, match="n99999999 .* are not ImageNet wnids"):
        load_benchmark("imagenet", root)


def test_imagenet_a_foreign_folder(fresh_data: Any, fk: Any) -> None:
    root, _ = fresh_data("imagenet_a")
    fk.write_image(root / "imagenet-adversarial" / "imagenet-a" / "n01440764" / "x.jpg")
    with pytest.raises(DatasetError, match="n01440764 .* not among the 200 imagenet-a classes"):
        load_benchmark("imagenet_a", root)


def test_empty_class_folder(fresh_data: Any, tmp_path: Path, fk: Any) -> None:
    root, _ = fresh_data("imagenet")
    (root / "imagenet-sketch" / "images" / "n01440764" / "img_00.png").unlink()
    (root / "imagenet-sketch" / "images" / "n01440764" / "img_01.png").unlink()
    with pytest.raises(DatasetError, match="n01440764 holds no images"):
        load_benchmark("imagenet_sketch", root)
    # user folder
    fk.write_image(tmp_path / "mine" / "cat" / "a.jpg")
    (tmp_path / "mine" / "dog").mkdir()
    with pytest.raises(DatasetError, match="dog: empty class folder"):
        load_folder(tmp_path / "mine")


def test_non_images_are_counted_not_dropped_silently(fresh_data: Any) -> None:
    root, _ = fresh_data("imagenet")
    (root / "imagenet-sketch" / "images" / "n01440764" / "notes.txt").write_text("x")
    with pytest.warns(UserWarning, match="skipped 1 entries that are not images"):
        ds = load_benchmark("imagenet_sketch", root)
    assert ds.meta["skipped"] == {"count": 1, "examples": ["n01440764/notes.txt"]}


def test_more_shots_than_images() -> None:
    labels = [0] * 5 + [1] * 2 + [2] * 5
    names = ["cat", "dog", "emu"]
    # the reference sampler is lenient: all items of the short class
    idx = sample_few_shot(labels, 4, seed=1)
    assert sorted(i for i in idx if labels[i] == 1) == [5, 6]
    # fewclip's draw is strict and names the class and the counts
    with pytest.raises(
        NotEnoughImagesError, match=r"fewer images than 4 shots: class 1 \('dog'\) has 2 images"
    ):
        draw_support(labels, 4, seed=1, classnames=names)
    # with repeat: sampled with replacement (Tip-Adapter)
    rep = draw_support(labels, 4, seed=1, classnames=names, repeat=True)
    assert len(rep) == 12
    assert [labels[i] for i in rep].count(1) == 4
    # allow_fewer: CoOp's behaviour
    assert draw_support(labels, 4, seed=1, classnames=names, allow_fewer=True) == idx
    # a class with no image at all is an error even with repeat
    with pytest.raises(NotEnoughImagesError, match=r"class 2 \('emu'\) has no images"):
        draw_support([0, 1, 0, 1], 1, seed=1, classnames=names, repeat=True)


def test_bad_shots_and_seed() -> None:
    with pytest.raises(ValueError, match="shots: expected a positive integer"):
        sample_few_shot([0, 1], 0, seed=1)
    with pytest.raises(TypeError, match="seed: expected an int"):
        sample_few_shot([0, 1], 1, seed="1")  # type: ignore[arg-type]


def test_manifest_errors(tmp_path: Path, fk: Any) -> None:
    fk.write_image(tmp_path / "a.jpg")
    m = tmp_path / "m.csv"
    m.write_text("path,label\na.jpg,cat\n../b.jpg,dog\n")
    with pytest.raises(DatasetError, match=r"m.csv:3: path '../b.jpg' escapes the dataset root"):
        load_manifest(m)
    m.write_text("path,label\na.jpg,cat\n/abs/b.jpg,dog\n")
    with pytest.raises(DatasetError, match=r"m.csv:3: path '/abs/b.jpg' is absolute"):
        load_manifest(m)
    m.write_text("file,label\na.jpg,cat\n")
    with pytest.raises(DatasetError, match="header must name columns 'path' and 'label'"):
        load_manifest(m)
    m.write_text("path,label,split\na.jpg,cat,train\na.jpg,cat,holdout\n")
    with pytest.raises(DatasetError, match=r"m.csv:3: unknown split 'holdout'"):
        load_manifest(m)
    m.write_text("path,label,split\na.jpg,cat,train\nmissing.jpg,cat,test\n")
    with pytest.raises(DatasetError, match=r"1 listed images do not exist .* line 3 'missing.jpg'"):
        load_manifest(m)
    j = tmp_path / "m.jsonl"
    j.write_text('{"path": "a.jpg", "label": "cat"}\n{"path": "a.jpg"}\n')
    with pytest.raises(DatasetError, match=r"m.jsonl:2: needs 'path' and 'label'"):
        load_manifest(j)
    j.write_text(
        '{"path": "a.jpg", "label": "cat", "split": "train"}\n{"path": "a.jpg", "label": "cat"}\n'
    )
    with pytest.raises(DatasetError, match=r"m.jsonl:2: no split given while other rows have one"):
        load_manifest(j)
    j.write_text(
        '{"path": "a.jpg", "label": "cat", "split": "train"}\n'
        '{"path": "a.jpg", "label": "dog", "split": "test"}\n'
    )
    with pytest.raises(DatasetError, match="classes without training images: 'dog'"):
        load_manifest(j)


def test_read_coop_split_direct(tmp_path: Path) -> None:
    p = tmp_path / "s.json"
    p.write_text(json.dumps([1, 2]))
    with pytest.raises(DatasetError, match="expected an object with keys 'train'"):
        read_coop_split(p, tmp_path)
    with pytest.raises(DatasetError, match="split file not found"):
        read_coop_split(tmp_path / "nope.json", tmp_path)
