"""A fake CoOp ``$DATA`` tree: tiny images, split files in the real formats, a few classes each."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from fewclip.data import IMAGENET_A_WNIDS, IMAGENET_R_WNIDS, IMAGENET_WNIDS

SIZES = {"train": 4, "val": 2, "test": 3}  # images per class and split in the fake tree


def write_image(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (8, 8), ((seed * 37) % 256, (seed * 91) % 256, 128))
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    img.save(path, format=fmt)


SPLIT_JSON: dict[str, dict[str, Any]] = {
    "caltech101": {
        "dir": "caltech-101",
        "image_dir": "101_ObjectCategories",
        "file": "split_zhou_Caltech101.json",
        "classes": [("accordion", "accordion"), ("airplanes", "airplane"), ("Faces", "face")],
    },
    "oxford_pets": {
        "dir": "oxford_pets",
        "image_dir": "images",
        "file": "split_zhou_OxfordPets.json",
        "classes": [("abyssinian", "abyssinian"), ("american_bulldog", "american_bulldog")],
        "flat": True,
    },
    "stanford_cars": {
        "dir": "stanford_cars",
        "image_dir": "",
        "file": "split_zhou_StanfordCars.json",
        "classes": [("a", "2012 Tesla Model S Sedan"), ("b", "2007 Volvo 240 Sedan")],
        "cars": True,
    },
    "oxford_flowers": {
        "dir": "oxford_flowers",
        "image_dir": "jpg",
        "file": "split_zhou_OxfordFlowers.json",
        "classes": [
            ("1", "pink primrose"),
            ("2", "hard-leaved pocket orchid"),
            ("3", "canterbury bells"),
        ],
        "flat": True,
    },
    "food101": {
        "dir": "food-101",
        "image_dir": "images",
        "file": "split_zhou_Food101.json",
        "classes": [("apple_pie", "apple_pie"), ("baby_back_ribs", "baby_back_ribs")],
    },
    "sun397": {
        "dir": "sun397",
        "image_dir": "SUN397",
        "file": "split_zhou_SUN397.json",
        "classes": [("a/abbey", "abbey"), ("l/library/indoor", "indoor library")],
    },
    "dtd": {
        "dir": "dtd",
        "image_dir": "images",
        "file": "split_zhou_DescribableTextures.json",
        "classes": [("banded", "banded"), ("blotchy", "blotchy"), ("braided", "braided")],
    },
    "eurosat": {
        "dir": "eurosat",
        "image_dir": "2750",
        "file": "split_zhou_EuroSAT.json",
        "classes": [("AnnualCrop", "Annual Crop Land"), ("SeaLake", "Sea or Lake")],
    },
    "ucf101": {
        "dir": "ucf101",
        "image_dir": "UCF-101-midframes",
        "file": "split_zhou_UCF101.json",
        "classes": [("Apply_Eye_Makeup", "Apply_Eye_Makeup"), ("Archery", "Archery")],
    },
}

FGVC_VARIANTS = ["707-320", "A300B4", "Cessna 172"]
IMAGENET_IDS = [0, 1, 657, 744]  # 657 and 744 are both "missile"
A_IDS = [0, 5, 199]  # positions in IMAGENET_A_WNIDS
R_IDS = [0, 3, 199]
V2_FOLDERS = [0, 1, 744]


def _rel(spec: dict[str, Any], folder: str, split: str, i: int, k: int) -> str:
    if spec.get("cars"):
        sub = "cars_test" if split == "test" else "cars_train"
        return f"{sub}/{folder}{split}{i:02d}.jpg"
    if spec.get("flat"):
        return f"{folder}_{split}_{i:02d}.jpg"
    return f"{folder}/{split}_{i:02d}.jpg"


def make_split_json(root: Path, name: str) -> dict[str, Any]:
    spec = SPLIT_JSON[name]
    ddir = root / spec["dir"]
    image_dir = ddir / spec["image_dir"] if spec["image_dir"] else ddir
    split: dict[str, list[list[Any]]] = {}
    k = 0
    for s, n in SIZES.items():
        entries = []
        # interleave classes so the file order is not grouped by class
        for i in range(n):
            for label, (folder, cname) in enumerate(spec["classes"]):
                rel = _rel(spec, folder, s, i, k)
                write_image(image_dir / rel, k)
                k += 1
                entries.append([rel, label, cname])
        split[s] = entries
    (ddir / spec["file"]).write_text(json.dumps(split))
    return {
        "classnames": [c for _, c in spec["classes"]],
        "sizes": {s: n * len(spec["classes"]) for s, n in SIZES.items()},
        "split": split,
    }


def make_fgvc(root: Path) -> dict[str, Any]:
    ddir = root / "fgvc_aircraft"
    (ddir / "images").mkdir(parents=True)
    (ddir / "variants.txt").write_text("\n".join(FGVC_VARIANTS) + "\n")
    k = 1000000
    for s, n in SIZES.items():
        lines = []
        for _ in range(n):
            for v in FGVC_VARIANTS:
                write_image(ddir / "images" / f"{k}.jpg", k)
                lines.append(f"{k} {v}")
                k += 1
        (ddir / f"images_variant_{s}.txt").write_text("\n".join(lines) + "\n")
    return {
        "classnames": FGVC_VARIANTS,
        "sizes": {s: n * len(FGVC_VARIANTS) for s, n in SIZES.items()},
    }


def _folders(base: Path, folders: list[str], n: int, ext: str = ".JPEG") -> None:
    for j, f in enumerate(folders):
        for i in range(n):
            write_image(base / f / f"img_{i:02d}{ext}", 7 * j + i)


def make_imagenet_family(root: Path) -> dict[str, Any]:
    wnids = [IMAGENET_WNIDS[i] for i in IMAGENET_IDS]
    _folders(root / "imagenet" / "images" / "train", wnids, 3)
    _folders(root / "imagenet" / "images" / "val", wnids, 2)
    _folders(root / "imagenet-sketch" / "images", wnids[:3], 2, ".png")
    _folders(
        root / "imagenetv2" / "imagenetv2-matched-frequency-format-val",
        [str(i) for i in V2_FOLDERS],
        2,
        ".jpeg",
    )
    a = [IMAGENET_A_WNIDS[i] for i in A_IDS]
    r = [IMAGENET_R_WNIDS[i] for i in R_IDS]
    _folders(root / "imagenet-adversarial" / "imagenet-a", a, 2, ".jpg")
    _folders(root / "imagenet-rendition" / "imagenet-r", r, 2, ".jpg")
    (root / "imagenet-adversarial" / "imagenet-a" / "README.txt").write_text("readme")
    (root / "imagenet-rendition" / "imagenet-r" / "README.txt").write_text("readme")
    return {"imagenet_wnids": wnids, "a_wnids": a, "r_wnids": r}


def build_fake_data(root: Path) -> dict[str, Any]:
    expect = {name: make_split_json(root, name) for name in SPLIT_JSON}
    expect["fgvc_aircraft"] = make_fgvc(root)
    expect["imagenet_family"] = make_imagenet_family(root)
    return expect


@pytest.fixture(scope="session")
def fake_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """(``$DATA`` root, expectations) for a tree holding every benchmark. Do not modify it."""
    root = tmp_path_factory.mktemp("DATA")
    return root, build_fake_data(root)


@pytest.fixture
def fresh_data(tmp_path: Path) -> Callable[[str], tuple[Path, dict[str, Any]]]:
    """Build one dataset in a fresh ``$DATA`` (for tests that break files)."""

    def make(name: str) -> tuple[Path, dict[str, Any]]:
        root = tmp_path / "DATA"
        root.mkdir(exist_ok=True)
        if name in SPLIT_JSON:
            return root, make_split_json(root, name)
        if name == "fgvc_aircraft":
            return root, make_fgvc(root)
        return root, make_imagenet_family(root)

    return make


@pytest.fixture(scope="session")
def fk() -> Any:
    """This module (builders and constants), since test modules cannot import a conftest."""
    import sys

    return sys.modules[__name__]
