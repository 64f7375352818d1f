"""Paper numbers and the Tip-Adapter configuration aliases behind ``fewclip reproduce``.

``PAPER`` holds top-1 accuracies (%) with RN50 from Tip-Adapter (Zhang et al., ECCV 2022):
Table 2 for ImageNet (zero-shot CLIP with the 7-template ensemble, linear probe, CLIP-Adapter,
Tip-Adapter, Tip-Adapter-F) and the official ``exp.log`` behind Fig. 4/5 for the other ten
datasets (zero-shot, CLIP-Adapter, Tip-Adapter, Tip-Adapter-F). Hyper-parameters in the papers
were tuned on the test set for ImageNet and on the full val split elsewhere: compare under the
protocol the paper used (``oracle-test`` / ``full-val``) and read the ``fewshot-val`` numbers as
what a user without test labels gets.

``tip_yaml_to_overrides`` maps a Tip-Adapter ``configs/<dataset>.yaml`` to bench overrides.

``GENERALISATION_PAPER`` holds the prompt-learning papers' generalisation numbers (ViT-B/16,
16 shots), each with its source table and how far it was checked (``PaperResult``); the bench
tables print them under ours (``generalisation_papers``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fewclip.errors import InvalidValueError
from fewclip.generalisation import CROSS_DATASET_TARGETS, DOMAIN_TARGETS

__all__ = [
    "GENERALISATION_PAPER",
    "PAPER",
    "PAPER_PROTOCOL",
    "TIP_YAML_KEYS",
    "PaperResult",
    "generalisation_papers",
    "paper_number",
    "tip_yaml_to_overrides",
]

_SHOTS = (16, 8, 4, 2, 1)


def _row(text: str) -> dict[int, float]:
    return dict(zip(_SHOTS, (float(v) for v in text.split("/")), strict=True))


def _flat(value: float) -> dict[int, float]:
    return dict.fromkeys(_SHOTS, value)


# dataset → method → shots → accuracy (%). exp.log lists 16/8/4/2/1 shots.
PAPER: dict[str, dict[str, dict[int, float]]] = {
    "imagenet": {
        "zero-shot": _flat(60.33),
        "linear-probe": {1: 22.17, 2: 31.90, 4: 41.20, 8: 49.52, 16: 56.13},
        "clip-adapter": {1: 61.20, 2: 61.52, 4: 61.84, 8: 62.68, 16: 63.59},
        "tip-adapter": {1: 60.70, 2: 60.96, 4: 60.98, 8: 61.45, 16: 62.03},
        "tip-adapter-f": {1: 61.32, 2: 61.69, 4: 62.52, 8: 64.00, 16: 65.51},
    },
    "sun397": {
        "zero-shot": _flat(58.52),
        "tip-adapter": _row("66.85/65.62/64.15/62.70/61.30"),
        "tip-adapter-f": _row("71.47/68.87/66.21/63.64/62.50"),
        "clip-adapter": _row("69.55/67.50/65.96/63.29/61.30"),
    },
    "oxford_pets": {
        "zero-shot": _flat(85.83),
        "tip-adapter": _row("88.14/87.03/86.45/87.03/86.10"),
        "tip-adapter-f": _row("89.70/88.09/87.54/87.03/87.00"),
        "clip-adapter": _row("87.84/87.65/87.46/86.73/85.99"),
    },
    "eurosat": {
        "zero-shot": _flat(37.52),
        "tip-adapter": _row("70.54/67.95/65.32/61.68/54.38"),
        "tip-adapter-f": _row("84.54/77.93/74.12/66.15/59.53"),
        "clip-adapter": _row("84.43/77.93/73.38/63.90/61.40"),
    },
    "caltech101": {
        "zero-shot": _flat(85.92),
        "tip-adapter": _row("90.18/89.83/89.39/88.44/87.18"),
        "tip-adapter-f": _row("92.86/91.44/90.56/89.74/89.33"),
        "clip-adapter": _row("92.49/91.40/89.98/89.37/88.60"),
    },
    "dtd": {
        "zero-shot": _flat(42.20),
        "tip-adapter": _row("60.93/58.63/53.96/49.47/46.22"),
        "tip-adapter-f": _row("66.55/62.71/57.39/53.72/49.65"),
        "clip-adapter": _row("65.96/61.00/56.86/51.48/45.80"),
    },
    "fgvc_aircraft": {
        "zero-shot": _flat(17.10),
        "tip-adapter": _row("29.76/25.59/22.41/21.21/19.05"),
        "tip-adapter-f": _row("35.55/30.21/25.80/23.19/20.22"),
        "clip-adapter": _row("32.10/26.25/22.59/20.10/17.49"),
    },
    "food101": {
        "zero-shot": _flat(77.32),
        "tip-adapter": _row("77.83/77.76/77.54/77.52/77.42"),
        "tip-adapter-f": _row("79.43/78.64/78.24/77.81/77.51"),
        "clip-adapter": _row("78.25/78.04/77.92/77.22/76.82"),
    },
    "oxford_flowers": {
        "zero-shot": _flat(66.02),
        "tip-adapter": _row("89.89/87.98/83.80/79.13/73.12"),
        "tip-adapter-f": _row("94.80/91.51/88.83/82.30/79.98"),
        "clip-adapter": _row("93.90/91.72/87.17/81.61/73.49"),
    },
    "ucf101": {
        "zero-shot": _flat(61.35),
        "tip-adapter": _row("70.58/68.68/66.46/64.74/62.60"),
        "tip-adapter-f": _row("78.03/74.25/70.55/66.43/64.87"),
        "clip-adapter": _row("76.76/73.30/69.05/67.12/62.20"),
    },
    "stanford_cars": {
        "zero-shot": _flat(55.74),
        "tip-adapter": _row("66.77/62.93/61.45/57.93/57.54"),
        "tip-adapter-f": _row("75.74/69.25/64.57/61.50/58.86"),
        "clip-adapter": _row("74.01/67.89/62.45/58.74/55.13"),
    },
}

#: The protocol each paper number was produced under.
PAPER_PROTOCOL: dict[str, str] = {d: "full-val" for d in PAPER} | {"imagenet": "oracle-test"}


def paper_number(dataset: str, method: str, shots: int) -> float | None:
    """The paper's accuracy (%) for RN50, or ``None`` when the paper has none."""
    return PAPER.get(dataset, {}).get(method, {}).get(shots)


@dataclass(frozen=True)
class PaperResult:
    """One published row of a generalisation table.

    Attributes:
        protocol: ``base-to-new``, ``cross-dataset`` or ``domain-generalisation``.
        dataset: the table it belongs to: a dataset (base-to-new), the source (transfer), or
            ``"average"`` (base-to-new's average over the 11 datasets).
        method: the fewclip method it corresponds to (``zero-shot`` for "CLIP").
        label: the paper's name for the row.
        values: column → top-1 accuracy (%): ``base``/``new``/``H``, or dataset names and
            ``average``.
        shots, backbone: the setting (16 shots, ViT-B/16 for every row here).
        key: short name of the source, shown beside the row (``CoCoOp T1``).
        citation: the paper and table.
        checked: how the numbers were checked, or ``None``: taken from the paper as recalled,
            not compared with it here (printed with the source: check before citing).
    """

    protocol: str
    dataset: str
    method: str
    label: str
    values: Mapping[str, float]
    key: str
    citation: str
    checked: str | None
    shots: int = 16
    backbone: str = "ViT-B/16"


_COCOOP_T1 = (
    "CoCoOp (Zhou et al., CVPR 2022), Table 1, average over 11 datasets; ViT-B/16, 16 shots"
)
_T1_CHECK = (
    "the same three rows appear, citing CoCoOp, in the README tables of later prompt-learning "
    "repositories (e.g. ProLIP, HiCroPL); the paper itself was not read here"
)
_KGCOOP_T1 = (
    "KgCoOp (Yao et al., CVPR 2023), base-to-new table, average over 11 datasets; ViT-B/16, "
    "16 shots"
)
_KGCOOP_CHECK = (
    "the same row appears, citing KgCoOp, in the README tables of later prompt-learning "
    "repositories (e.g. HiCroPL); the paper itself was not read here"
)
_COCOOP_T2 = (
    "CoCoOp (Zhou et al., CVPR 2022), Table 2 (cross-dataset, source ImageNet); ViT-B/16, "
    "16 shots; NOT checked against the paper here"
)
_COCOOP_T3 = (
    "CoCoOp (Zhou et al., CVPR 2022), Table 3 (domain generalisation, CoOp's layout: source "
    "ImageNet, targets -V2/-Sketch/-A/-R); ViT-B/16, 16 shots; NOT checked against the paper here"
)
_XD = ("imagenet", *CROSS_DATASET_TARGETS, "average")
_DG = ("imagenet", *DOMAIN_TARGETS)


def _cols(names: Sequence[str], text: str) -> dict[str, float]:
    return dict(zip(names, (float(v) for v in text.split()), strict=True))


#: Published generalisation numbers (see ``PaperResult``). Per-dataset base-to-new rows are not
#: stored: they could not be checked here.
GENERALISATION_PAPER: tuple[PaperResult, ...] = (
    PaperResult(
        "base-to-new",
        "average",
        "zero-shot",
        "CLIP",
        _cols(("base", "new", "H"), "69.34 74.22 71.70"),
        "CoCoOp T1",
        _COCOOP_T1,
        _T1_CHECK,
    ),
    PaperResult(
        "base-to-new",
        "average",
        "coop",
        "CoOp",
        _cols(("base", "new", "H"), "82.69 63.22 71.66"),
        "CoCoOp T1",
        _COCOOP_T1,
        _T1_CHECK,
    ),
    PaperResult(
        "base-to-new",
        "average",
        "cocoop",
        "CoCoOp",
        _cols(("base", "new", "H"), "80.47 71.69 75.83"),
        "CoCoOp T1",
        _COCOOP_T1,
        _T1_CHECK,
    ),
    PaperResult(
        "base-to-new",
        "average",
        "kgcoop",
        "KgCoOp",
        _cols(("base", "new", "H"), "80.73 73.60 77.00"),
        "KgCoOp T1",
        _KGCOOP_T1,
        _KGCOOP_CHECK,
    ),
    PaperResult(
        "cross-dataset",
        "imagenet",
        "coop",
        "CoOp",
        _cols(_XD, "71.51 93.70 89.14 64.51 68.71 85.30 18.47 64.15 41.92 46.39 66.55 63.88"),
        "CoCoOp T2, unchecked",
        _COCOOP_T2,
        None,
    ),
    PaperResult(
        "cross-dataset",
        "imagenet",
        "cocoop",
        "CoCoOp",
        _cols(_XD, "71.02 94.43 90.14 65.32 71.88 86.06 22.94 67.36 45.73 45.37 68.21 65.74"),
        "CoCoOp T2, unchecked",
        _COCOOP_T2,
        None,
    ),
    PaperResult(
        "domain-generalisation",
        "imagenet",
        "zero-shot",
        "CLIP",
        _cols(_DG, "66.73 60.83 46.15 47.77 73.96"),
        "CoCoOp T3, unchecked",
        _COCOOP_T3,
        None,
    ),
    PaperResult(
        "domain-generalisation",
        "imagenet",
        "coop",
        "CoOp",
        _cols(_DG, "71.51 64.20 47.99 49.71 75.21"),
        "CoCoOp T3, unchecked",
        _COCOOP_T3,
        None,
    ),
    PaperResult(
        "domain-generalisation",
        "imagenet",
        "cocoop",
        "CoCoOp",
        _cols(_DG, "71.02 64.07 48.75 50.63 76.18"),
        "CoCoOp T3, unchecked",
        _COCOOP_T3,
        None,
    ),
)


def generalisation_papers(protocol: str, dataset: str, shots: int) -> list[PaperResult]:
    """The published rows of ``protocol``'s table for ``dataset`` (or ``"average"``) at
    ``shots``, in table order."""
    return [
        p
        for p in GENERALISATION_PAPER
        if p.protocol == protocol and p.dataset == dataset and p.shots == shots
    ]


#: Tip-Adapter ``configs/*.yaml`` keys → (bench key, how to apply).
TIP_YAML_KEYS: dict[str, str] = {
    "dataset": "datasets",
    "shots": "shots",
    "backbone": "backbones",
    "search_scale": "params.{m}.search_scale",
    "search_step": "params.{m}.search_step",
    "init_alpha": "params.{m}.alpha",
    "init_beta": "params.{m}.beta",
    "search_hp": "params.{m}.search",
    "lr": "params.tip-adapter-f.lr",
    "train_epoch": "params.tip-adapter-f.epochs",
    "augment_epoch": "views",
}
_IGNORED = ("root_path", "load_cache", "load_pre_feat", "cache_dir")
_DATASET_ALIASES = {"fgvc": "fgvc_aircraft"}


def tip_yaml_to_overrides(cfg: Mapping[str, Any], *, datasets: Sequence[str] = ()) -> list[str]:
    """Bench ``key=value`` overrides equivalent to a Tip-Adapter config mapping.

    Method hyper-parameters (``init_alpha``, ``search_scale``, ``train_epoch``, ...) go to
    ``dataset_params.<dataset>.<method>`` for the config's ``dataset`` (else for each of
    ``datasets``), so that they win over the preset's per-dataset values, as the file's values
    do in the reference; without any dataset they go to ``params``. Unknown keys raise
    ``InvalidValueError`` naming them; file-system keys (``root_path``, ``load_cache`` ...)
    are ignored, since fewclip has its own data root and feature store.
    """
    import json

    unknown = sorted(k for k in cfg if k not in TIP_YAML_KEYS and k not in _IGNORED)
    if unknown:
        raise InvalidValueError(
            f"Tip-Adapter config: unknown key(s) {', '.join(unknown)}; known: "
            f"{', '.join(sorted(TIP_YAML_KEYS))} (ignored: {', '.join(_IGNORED)})"
        )
    scope = list(datasets)
    if "dataset" in cfg:
        scope = [_DATASET_ALIASES.get(str(cfg["dataset"]), str(cfg["dataset"]))]
    out: list[str] = []
    for key, value in cfg.items():
        if key in _IGNORED:
            continue
        target = TIP_YAML_KEYS[key]
        if key == "dataset":
            value = _DATASET_ALIASES.get(str(value), value)
        if key == "backbone":
            value = str(value)
        targets = (
            [target.format(m=m) for m in ("tip-adapter", "tip-adapter-f")]
            if "{m}" in target
            else [target]
        )
        for t in targets:
            if t.startswith("params.") and scope:
                rest = t.removeprefix("params.")
                out += [f"dataset_params.{d}.{rest}={json.dumps(value)}" for d in scope]
            else:
                out.append(f"{t}={json.dumps(value)}")
    return out
