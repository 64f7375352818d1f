"""The benchmark table: where each dataset lives under ``$DATA``, its split sizes and prompt.

Layouts, split files and sizes follow CoOp's ``DATASETS.md`` and ``datasets/*.py`` (also used by
Tip-Adapter and CLIP-Adapter). Split sizes are the CoOp ``split_zhou_*.json`` sizes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from fewclip.errors import NotFoundError

__all__ = [
    "BENCHMARKS",
    "CALTECH101_RENAMES",
    "EUROSAT_RENAMES",
    "SPLIT_SOURCE",
    "BenchmarkSpec",
    "benchmark_names",
    "get_spec",
]

#: Where the split files come from (printed in every "missing file" error).
SPLIT_SOURCE = (
    "The split_zhou_*.json files and the dataset download links are listed in CoOp's "
    "DATASETS.md (github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md); download them on a machine "
    "with internet access and copy them next to the images as shown. ImageNet's classnames.txt "
    "is optional for fewclip (the 1000 CLIP names are built in)."
)

#: CoOp's Caltech101 folder renames (the split file already holds the new names).
CALTECH101_RENAMES: Mapping[str, str] = {
    "airplanes": "airplane",
    "Faces": "face",
    "Leopards": "leopard",
    "Motorbikes": "motorbike",
}

#: CoOp's EuroSAT folder → prompt name (the split file already holds the new names).
EUROSAT_RENAMES: Mapping[str, str] = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}


@dataclass(frozen=True)
class BenchmarkSpec:
    """One benchmark dataset.

    Attributes:
        name: canonical name (``"oxford_pets"``).
        coop_name: CoOp's class name (``"OxfordPets"``), also accepted by ``load_benchmark``.
        dataset_dir: folder under ``$DATA``.
        kind: reader: ``split-json``, ``fgvc``, ``imagenet``, ``imagenet-v2``, ``imagenet-folders``.
        image_dir: image folder inside ``dataset_dir`` (``""``: the dataset folder itself).
        split_file: CoOp split file inside ``dataset_dir`` (split-json datasets only).
        n_classes: number of classes.
        sizes: expected number of images per split.
        template: the single prompt template CoOp / Tip-Adapter use.
        aliases: other accepted names (Tip-Adapter config names, ...).
        subset: ``"imagenet-a"`` / ``"imagenet-r"`` for the 200-class test sets.
        layout: the expected folder layout, shown in errors.
    """

    name: str
    coop_name: str
    dataset_dir: str
    kind: str
    image_dir: str
    split_file: str | None
    n_classes: int
    sizes: Mapping[str, int]
    template: str
    aliases: tuple[str, ...] = ()
    subset: str | None = None
    layout: str = field(default="", repr=False)

    @property
    def test_only(self) -> bool:
        return "train" not in self.sizes

    def expected_layout(self) -> str:
        return self.layout or _default_layout(self)


def _default_layout(spec: BenchmarkSpec) -> str:
    img = f"{spec.image_dir}/" if spec.image_dir else "<images>"
    lines = [f"$DATA/{spec.dataset_dir}/"]
    if spec.image_dir:
        lines.append(f"    {img}...                  images")
    if spec.split_file:
        where = f"{spec.image_dir}/" if spec.image_dir else f"{spec.dataset_dir}/"
        lines.append(
            f"    {spec.split_file}   "
            f'{{"train"|"val"|"test": [[path relative to {where}, label, classname], ...]}}'
        )
    return "\n".join(lines)


_PHOTO = "a photo of a {}."

_SPECS = [
    BenchmarkSpec(
        "imagenet",
        "ImageNet",
        "imagenet",
        "imagenet",
        "images",
        None,
        1000,
        {"train": 1_281_167, "test": 50_000},
        _PHOTO,
        ("ilsvrc", "imagenet1k"),
        layout=(
            "$DATA/imagenet/\n"
            "    images/train/<wnid>/*.JPEG    1000 class folders (n01440764, ...)\n"
            "    images/val/<wnid>/*.JPEG      the ILSVRC-2012 val set, used as test\n"
            "    classnames.txt                optional: '<wnid> <class name>' per line"
        ),
    ),
    BenchmarkSpec(
        "caltech101",
        "Caltech101",
        "caltech-101",
        "split-json",
        "101_ObjectCategories",
        "split_zhou_Caltech101.json",
        100,
        {"train": 4128, "val": 1649, "test": 2465},
        _PHOTO,
        ("caltech-101", "caltech"),
    ),
    BenchmarkSpec(
        "oxford_pets",
        "OxfordPets",
        "oxford_pets",
        "split-json",
        "images",
        "split_zhou_OxfordPets.json",
        37,
        {"train": 2944, "val": 736, "test": 3669},
        "a photo of a {}, a type of pet.",
        ("pets", "oxford-pets", "oxfordiiitpet"),
    ),
    BenchmarkSpec(
        "stanford_cars",
        "StanfordCars",
        "stanford_cars",
        "split-json",
        "",
        "split_zhou_StanfordCars.json",
        196,
        {"train": 6509, "val": 1635, "test": 8041},
        _PHOTO,
        ("cars", "stanford-cars"),
        layout=(
            "$DATA/stanford_cars/\n"
            "    cars_train/*.jpg\n"
            "    cars_test/*.jpg\n"
            "    split_zhou_StanfordCars.json   paths relative to stanford_cars/ "
            "(cars_train/00001.jpg)"
        ),
    ),
    BenchmarkSpec(
        "oxford_flowers",
        "OxfordFlowers",
        "oxford_flowers",
        "split-json",
        "jpg",
        "split_zhou_OxfordFlowers.json",
        102,
        {"train": 4093, "val": 1633, "test": 2463},
        "a photo of a {}, a type of flower.",
        ("flowers", "flowers102", "oxford-flowers"),
    ),
    BenchmarkSpec(
        "food101",
        "Food101",
        "food-101",
        "split-json",
        "images",
        "split_zhou_Food101.json",
        101,
        {"train": 50_500, "val": 20_200, "test": 30_300},
        "a photo of {}, a type of food.",
        ("food-101", "food"),
    ),
    BenchmarkSpec(
        "fgvc_aircraft",
        "FGVCAircraft",
        "fgvc_aircraft",
        "fgvc",
        "images",
        None,
        100,
        {"train": 3334, "val": 3333, "test": 3333},
        "a photo of a {}, a type of aircraft.",
        ("fgvc", "aircraft", "fgvc-aircraft"),
        layout=(
            "$DATA/fgvc_aircraft/\n"
            "    images/<image id>.jpg\n"
            "    variants.txt                   one variant per line; label = line index\n"
            "    images_variant_train.txt       '<image id> <variant>' per line\n"
            "    images_variant_val.txt\n"
            "    images_variant_test.txt\n"
            "  (the files of fgvc-aircraft-2013b/data, as CoOp's DATASETS.md describes)"
        ),
    ),
    BenchmarkSpec(
        "sun397",
        "SUN397",
        "sun397",
        "split-json",
        "SUN397",
        "split_zhou_SUN397.json",
        397,
        {"train": 15_880, "val": 3970, "test": 19_850},
        _PHOTO,
        ("sun",),
    ),
    BenchmarkSpec(
        "dtd",
        "DescribableTextures",
        "dtd",
        "split-json",
        "images",
        "split_zhou_DescribableTextures.json",
        47,
        {"train": 2820, "val": 1128, "test": 1692},
        "{} texture.",
        ("describabletextures", "textures"),
    ),
    BenchmarkSpec(
        "eurosat",
        "EuroSAT",
        "eurosat",
        "split-json",
        "2750",
        "split_zhou_EuroSAT.json",
        10,
        {"train": 13_500, "val": 5400, "test": 8100},
        "a centered satellite photo of {}.",
    ),
    BenchmarkSpec(
        "ucf101",
        "UCF101",
        "ucf101",
        "split-json",
        "UCF-101-midframes",
        "split_zhou_UCF101.json",
        101,
        {"train": 7639, "val": 1898, "test": 3783},
        "a photo of a person doing {}.",
        ("ucf",),
    ),
    BenchmarkSpec(
        "imagenet_v2",
        "ImageNetV2",
        "imagenetv2",
        "imagenet-v2",
        "imagenetv2-matched-frequency-format-val",
        None,
        1000,
        {"test": 10_000},
        _PHOTO,
        ("imagenetv2", "imagenet-v2"),
        layout=(
            "$DATA/imagenetv2/\n"
            "    imagenetv2-matched-frequency-format-val/<0..999>/*.jpeg   folder = class id\n"
            "    classnames.txt                 optional: '<wnid> <class name>' per line"
        ),
    ),
    BenchmarkSpec(
        "imagenet_sketch",
        "ImageNetSketch",
        "imagenet-sketch",
        "imagenet-folders",
        "images",
        None,
        1000,
        {"test": 50_889},
        _PHOTO,
        ("imagenet-sketch", "sketch"),
        layout=(
            "$DATA/imagenet-sketch/\n"
            "    images/<wnid>/*.JPEG           1000 class folders\n"
            "    classnames.txt                 optional: '<wnid> <class name>' per line"
        ),
    ),
    BenchmarkSpec(
        "imagenet_a",
        "ImageNetA",
        "imagenet-adversarial",
        "imagenet-folders",
        "imagenet-a",
        None,
        200,
        {"test": 7500},
        _PHOTO,
        ("imagenet-a", "imagenet-adversarial"),
        subset="imagenet-a",
        layout=(
            "$DATA/imagenet-adversarial/\n"
            "    imagenet-a/<wnid>/*.jpg        the 200 ImageNet-A class folders (README.txt "
            "ignored)\n"
            "    classnames.txt                 optional: '<wnid> <class name>' per line"
        ),
    ),
    BenchmarkSpec(
        "imagenet_r",
        "ImageNetR",
        "imagenet-rendition",
        "imagenet-folders",
        "imagenet-r",
        None,
        200,
        {"test": 30_000},
        _PHOTO,
        ("imagenet-r", "imagenet-rendition"),
        subset="imagenet-r",
        layout=(
            "$DATA/imagenet-rendition/\n"
            "    imagenet-r/<wnid>/*.jpg        the 200 ImageNet-R class folders (README.txt "
            "ignored)\n"
            "    classnames.txt                 optional: '<wnid> <class name>' per line"
        ),
    ),
]

#: Canonical name → spec, in the order of the papers' tables.
BENCHMARKS: Mapping[str, BenchmarkSpec] = {s.name: s for s in _SPECS}


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


_LOOKUP: dict[str, str] = {}
for _s in _SPECS:
    for _alias in (_s.name, _s.coop_name, _s.dataset_dir, *_s.aliases):
        _LOOKUP.setdefault(_key(_alias), _s.name)


def benchmark_names() -> list[str]:
    """Canonical names of all supported benchmarks."""
    return list(BENCHMARKS)


def get_spec(name: str) -> BenchmarkSpec:
    """The spec of ``name`` (canonical name, CoOp class name, folder name or alias;
    case, ``-`` and ``_`` are ignored)."""
    if isinstance(name, BenchmarkSpec):
        return name
    try:
        return BENCHMARKS[_LOOKUP[_key(str(name))]]
    except KeyError:
        raise NotFoundError(
            f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}. "
            "For your own images use fewclip.data.load_folder or load_manifest."
        ) from None
