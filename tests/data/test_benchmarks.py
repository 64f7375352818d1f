"""Every benchmark reader on a generated fake $DATA tree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fewclip.data import (
    BENCHMARKS,
    DATASET_TEMPLATES,
    IMAGENET_A_WNIDS,
    IMAGENET_CLASSNAMES,
    IMAGENET_R_WNIDS,
    IMAGENET_WNIDS,
    MissingDataError,
    benchmark_names,
    check,
    get_spec,
    load,
    load_benchmark,
)

_SPLIT_JSON_NAMES = [
    "caltech101",
    "oxford_pets",
    "stanford_cars",
    "oxford_flowers",
    "food101",
    "sun397",
    "dtd",
    "eurosat",
    "ucf101",
]


def test_table_covers_the_issue() -> None:
    assert benchmark_names() == [
        "imagenet",
        "caltech101",
        "oxford_pets",
        "stanford_cars",
        "oxford_flowers",
        "food101",
        "fgvc_aircraft",
        "sun397",
        "dtd",
        "eurosat",
        "ucf101",
        "imagenet_v2",
        "imagenet_sketch",
        "imagenet_a",
        "imagenet_r",
    ]
    for name, spec in BENCHMARKS.items():
        assert DATASET_TEMPLATES[name] == spec.template
    assert BENCHMARKS["caltech101"].sizes == {"train": 4128, "val": 1649, "test": 2465}
    assert BENCHMARKS["imagenet_a"].n_classes == 200


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("fgvc", "fgvc_aircraft"),
        ("FGVCAircraft", "fgvc_aircraft"),
        ("OxfordPets", "oxford_pets"),
        ("DescribableTextures", "dtd"),
        ("caltech-101", "caltech101"),
        ("ImageNet-A", "imagenet_a"),
        ("imagenetv2", "imagenet_v2"),
        ("ImageNetSketch", "imagenet_sketch"),
    ],
)
def test_aliases(alias: str, name: str) -> None:
    assert get_spec(alias).name == name


def test_unknown_name() -> None:
    with pytest.raises(KeyError, match="unknown benchmark 'mnist'"):
        get_spec("mnist")


@pytest.mark.parametrize("name", _SPLIT_JSON_NAMES)
def test_split_json_datasets(fk: Any, fake_data: tuple[Path, dict[str, Any]], name: str) -> None:
    root, expect = fake_data
    ds = load_benchmark(name, root)
    exp = expect[name]
    assert ds.name == name
    assert list(ds.classnames) == exp["classnames"]
    assert {k: len(v) for k, v in ds.splits.items()} == exp["sizes"]
    assert ds.template == DATASET_TEMPLATES[name]
    for split, lst in ds.splits.items():
        # file order, paths and labels exactly as in the split file
        assert [
            [p, y, exp["classnames"][y]] for p, y in zip(lst.paths, lst.labels, strict=True)
        ] == (exp["split"][split])
        assert all(lst.abspath(i).is_file() for i in range(len(lst)))
        assert lst.open(0).mode == "RGB"


def test_class_names_as_the_references_use_them(fake_data: tuple[Path, dict[str, Any]]) -> None:
    root, _ = fake_data
    assert "airplane" in load_benchmark("caltech101", root).classnames
    assert "Annual Crop Land" in load_benchmark("eurosat", root).classnames
    assert "indoor library" in load_benchmark("sun397", root).classnames
    cars = load_benchmark("stanford_cars", root)
    assert cars.classnames[0] == "2012 Tesla Model S Sedan"
    assert cars.train.paths[0].startswith("cars_train/")
    assert cars.test.paths[0].startswith("cars_test/")
    assert cars.train.root == root / "stanford_cars"


def test_fgvc_text_files(fake_data: tuple[Path, dict[str, Any]]) -> None:
    root, expect = fake_data
    ds = load_benchmark("fgvc", root)
    assert list(ds.classnames) == expect["fgvc_aircraft"]["classnames"]
    assert {k: len(v) for k, v in ds.splits.items()} == expect["fgvc_aircraft"]["sizes"]
    assert ds.train.paths[0] == "1000000.jpg"
    assert ds.train.labels[:3] == (0, 1, 2)
    assert ds.train.root == root / "fgvc_aircraft" / "images"
    assert ds.template == "a photo of a {}, a type of aircraft."


def test_imagenet(fk: Any, fake_data: tuple[Path, dict[str, Any]]) -> None:
    root, _ = fake_data
    ds = load_benchmark("imagenet", root)
    assert set(ds.splits) == {"train", "test"}
    names = [IMAGENET_CLASSNAMES[i] for i in fk.IMAGENET_IDS]
    assert list(ds.classnames) == names
    assert ds.classnames.count("missile") == 2  # duplicates kept
    assert ds.meta["imagenet_index"] == fk.IMAGENET_IDS
    assert ds.meta["classnames_source"] == "builtin"
    assert len(ds.train) == 3 * len(fk.IMAGENET_IDS)
    assert len(ds.test) == 2 * len(fk.IMAGENET_IDS)
    assert ds.train.paths[0] == f"{IMAGENET_WNIDS[0]}/img_00.JPEG"
    assert ds.test.root == root / "imagenet" / "images" / "val"
    assert ds.train.labels == tuple(sorted(ds.train.labels))
    with pytest.raises(KeyError, match="no 'val' split"):
        _ = ds.val


def test_imagenet_builtin_lists() -> None:
    assert len(IMAGENET_WNIDS) == 1000
    assert list(IMAGENET_WNIDS) == sorted(IMAGENET_WNIDS)
    assert len(IMAGENET_CLASSNAMES) == 1000
    assert len(set(IMAGENET_CLASSNAMES)) == 998
    assert IMAGENET_CLASSNAMES[657] == IMAGENET_CLASSNAMES[744] == "missile"
    assert IMAGENET_CLASSNAMES[836] == IMAGENET_CLASSNAMES[837] == "sunglasses"
    assert IMAGENET_CLASSNAMES[:3] == ("tench", "goldfish", "great white shark")
    for sub in (IMAGENET_A_WNIDS, IMAGENET_R_WNIDS):
        assert len(sub) == 200 == len(set(sub))
        assert set(sub) <= set(IMAGENET_WNIDS)
        assert list(sub) == sorted(sub)
    assert IMAGENET_A_WNIDS[0] == "n01498041"
    assert IMAGENET_R_WNIDS[0] == "n01443537"


def test_imagenet_classnames_txt_overrides(fk: Any, tmp_path: Path) -> None:
    fk.make_imagenet_family(tmp_path)
    lines = [f"{w} custom {i}" for i, w in enumerate(IMAGENET_WNIDS)]
    (tmp_path / "imagenet" / "classnames.txt").write_text("\n".join(lines))
    ds = load_benchmark("imagenet", tmp_path)
    assert ds.classnames[2] == "custom 657"
    assert ds.meta["classnames_source"].endswith("classnames.txt")


def test_imagenet_variants(fk: Any, fake_data: tuple[Path, dict[str, Any]]) -> None:
    root, _ = fake_data
    sketch = load_benchmark("imagenet_sketch", root)
    assert set(sketch.splits) == {"test"}
    assert len(sketch.test) == 6
    assert list(sketch.classnames) == [IMAGENET_CLASSNAMES[i] for i in fk.IMAGENET_IDS[:3]]

    v2 = load_benchmark("imagenet_v2", root)
    assert len(v2.classnames) == 1000
    assert v2.classnames == IMAGENET_CLASSNAMES
    assert sorted(set(v2.test.labels)) == fk.V2_FOLDERS
    assert v2.test.paths[0] == "0/img_00.jpeg"
    assert len(v2.meta["missing_classes"]) == 1000 - len(fk.V2_FOLDERS)

    for name, ids, table in (
        ("imagenet_a", fk.A_IDS, IMAGENET_A_WNIDS),
        ("imagenet_r", fk.R_IDS, IMAGENET_R_WNIDS),
    ):
        ds = load_benchmark(name, root)
        wnids = [table[i] for i in ids]
        assert ds.meta["wnids"] == wnids
        assert sorted(set(ds.test.labels)) == [0, 1, 2]  # CoOp: enumerate existing folders
        parent = [IMAGENET_WNIDS.index(w) for w in wnids]
        assert ds.meta["imagenet_index"] == parent
        assert list(ds.classnames) == [IMAGENET_CLASSNAMES[i] for i in parent]
        assert "skipped" not in ds.meta  # README.txt is expected, not skipped silently
        assert len(ds.meta["missing_classes"]) == 197


def test_load_dispatch(
    fake_data: tuple[Path, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = fake_data
    assert load("dtd", root).name == "dtd"
    monkeypatch.setenv("FEWCLIP_DATA", str(root))
    assert load("eurosat").n_classes == 2
    # the dataset folder itself is accepted as root
    assert load_benchmark("dtd", root / "dtd").name == "dtd"
    with pytest.raises(KeyError, match="not a benchmark name"):
        load("no-such-thing")
    with pytest.raises(KeyError, match="did you mean 'eurosat'"):
        load("eurosta")
    with pytest.raises(FileNotFoundError, match="no such folder or file"):
        load("./my_photos/train")
    (root / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="found a .txt file"):
        load(root / "notes.txt")


@pytest.mark.parametrize("name", ["caltech101", "fgvc_aircraft", "imagenet", "imagenet_a"])
def test_missing_dataset_folder_names_it_and_shows_layout(tmp_path: Path, name: str) -> None:
    spec = get_spec(name)
    with pytest.raises(MissingDataError) as err:
        load_benchmark(name, tmp_path)
    msg = str(err.value)
    assert str(tmp_path / spec.dataset_dir) in msg
    assert "Expected layout" in msg
    assert f"$DATA/{spec.dataset_dir}/" in msg
    assert "DATASETS.md" in msg


def test_missing_split_file(tmp_path: Path) -> None:
    (tmp_path / "dtd" / "images").mkdir(parents=True)
    with pytest.raises(MissingDataError, match="split_zhou_DescribableTextures.json"):
        load_benchmark("dtd", tmp_path)


def test_missing_fgvc_file(fresh_data: Any) -> None:
    root, _ = fresh_data("fgvc_aircraft")
    (root / "fgvc_aircraft" / "images_variant_val.txt").unlink()
    with pytest.raises(MissingDataError, match="images_variant_val.txt"):
        load_benchmark("fgvc_aircraft", root)


def test_check_reports_sizes(
    fk: Any, fake_data: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    root, _ = fake_data
    rep = check(root, "dtd")
    assert not rep.ok  # the fake tree is tiny
    assert rep.n_classes == 3
    assert rep.counts == {s: 3 * n for s, n in fk.SIZES.items()}
    assert any("expected 47" in p for p in rep.problems)
    assert any("train: found 12 images, expected 2820" in p for p in rep.problems)
    assert "PROBLEMS" in str(rep)
    assert rep.to_dict()["expected"]["n_classes"] == 47
    missing = check(tmp_path, "caltech101")
    assert not missing.ok
    assert "not found" in missing.problems[0]


def test_check_passes_when_sizes_match(
    fake_data: tuple[Path, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    from fewclip.data.benchmarks import specs

    root, expect = fake_data
    fake = dataclasses.replace(
        specs.BENCHMARKS["eurosat"], n_classes=2, sizes=expect["eurosat"]["sizes"]
    )
    monkeypatch.setitem(specs.BENCHMARKS, "eurosat", fake)  # type: ignore[index]
    rep = check(root, "eurosat")
    assert rep.ok, rep.problems
    assert "OK" in str(rep)
