"""Synthetic feature sources with real dataset sizes, for benchmarks and tests of the runner.

``SyntheticSource`` is a ``FeatureSource`` over a ``fewclip.testing.SyntheticWorld`` with the
split sizes of a benchmark (``PRESETS``: ImageNet's 1.28M training images included). Labels of
every split exist up front (cheap); features are generated only for the rows a plan asks for,
each row from its own random stream keyed by (world seed, split, index), so a row has the same
features whichever request produced it and memory stays bounded by what is requested. Whole-split
requests (the test set at evaluation) are cached, one entry per split, and so is the last
row request per (split, views) (consecutive cells of one draw ask for the same rows).

``synthetic_prepare(...)`` returns a ``prepare(dataset, backbone)`` callable for ``run_bench``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fewclip.bench.runner import Prepared
from fewclip.errors import InvalidValueError, NotFoundError, OutOfRangeError
from fewclip.task import FeatureSet
from fewclip.testing.synthetic import (
    CALIBRATED,
    CLIP_RN50,
    PRESETS,
    DatasetShape,
    SyntheticWorld,
)

__all__ = [
    "SYNTHETIC_VARIANTS",
    "ZERO_SHOT_TARGETS",
    "SyntheticSource",
    "SyntheticVariant",
    "synthetic_prepare",
]

#: Zero-shot RN50 accuracies of Tip-Adapter's ``exp.log`` (fraction), used to calibrate each
#: synthetic world so that its numbers land in a familiar range.
ZERO_SHOT_TARGETS: Mapping[str, float] = {
    "imagenet": 0.6033,
    "caltech101": 0.8592,
    "oxford_pets": 0.8583,
    "stanford_cars": 0.5574,
    "oxford_flowers": 0.6602,
    "food101": 0.7732,
    "fgvc": 0.1710,
    "sun397": 0.5852,
    "dtd": 0.4220,
    "eurosat": 0.3752,
    "ucf101": 0.6135,
}

#: Benchmark names whose synthetic preset is spelled differently.
_PRESET_NAMES = {"fgvc_aircraft": "fgvc"}

_SPLIT_IDS = {"train": 1, "val": 2, "test": 3}


def _counts(total: int, classes: int) -> Tensor:
    base, extra = divmod(total, classes)
    return torch.tensor([base + (1 if c < extra else 0) for c in range(classes)])


class SyntheticSource:
    """A lazily generated ``FeatureSource`` with given split sizes.

    Args:
        world: the feature model (class means, spreads, text weights, dtype).
        sizes: images per split, e.g. ``{"train": 4128, "val": 1649, "test": 2465}``; a split
            of size 0 does not exist (ImageNet has no ``val``). Labels are class-sorted, spread
            as evenly as possible over the classes.
        n_views: augmented views generated per training image when ``views=True``.

    Row ``i`` of split ``s`` is drawn from a generator seeded by (world seed, s, i): its plain
    feature is ``norm·x`` with ``x = μ_c + spread·ε`` (plus the within-class spread along the
    class subspace in a structured world, ``SyntheticWorld.clean``) and view ``v`` is
    ``norm·(x + view_noise·ε_v)``, as in ``SyntheticWorld.sample`` (noise drawn in float32).
    """

    def __init__(self, world: SyntheticWorld, sizes: Mapping[str, int], *, n_views: int = 10):
        if n_views < 1:
            raise InvalidValueError(f"n_views: expected a positive integer, found {n_views}")
        bad = sorted(set(sizes) - set(_SPLIT_IDS))
        if bad:
            raise InvalidValueError(
                f"sizes: unknown split(s) {bad}; expected some of {list(_SPLIT_IDS)}"
            )
        self.world, self.n_views = world, n_views
        self._labels = {
            s: torch.repeat_interleave(
                torch.arange(world.n_classes), _counts(int(n), world.n_classes)
            )
            for s, n in sizes.items()
            if int(n) > 0
        }
        # (C, D) class means, shared with the world's text weights
        self._means = world._means.to(torch.float32)
        self._cache: dict[str, FeatureSet] = {}
        self._last: dict[tuple[str, bool], tuple[tuple[int, ...], FeatureSet]] = {}
        self.rows_generated = 0

    def splits(self) -> list[str]:
        return list(self._labels)

    def labels(self, split: str) -> Tensor:
        try:
            return self._labels[split]
        except KeyError:
            raise NotFoundError(
                f"synthetic source {self.world.name!r} has no {split!r} split "
                f"(has: {', '.join(self._labels)})"
            ) from None

    def _rows(self, split: str, index: Sequence[int], views: bool) -> FeatureSet:
        labels_all = self.labels(split)
        idx = torch.as_tensor(list(index), dtype=torch.long)
        n, d = len(idx), self.world.dim
        if n and (int(idx.min()) < 0 or int(idx.max()) >= len(labels_all)):
            raise OutOfRangeError(
                f"split {split!r}: indices must lie in [0, {len(labels_all)}), found "
                f"[{int(idx.min())}, {int(idx.max())}]"
            )
        labels = labels_all[idx]
        w = self.world
        nv = self.n_views if views else 0
        # float32 noise: 5x faster than float64 and plenty for synthetic features
        head = torch.empty(n, 1 + d)
        bank = torch.empty(nv, n, d) if nv else None
        g = torch.Generator()
        base = (w.seed * 1_000_003 + _SPLIT_IDS[split] * 7_919) * 2_000_003
        for j, i in enumerate(idx.tolist()):
            g.manual_seed((base + i) % 2**63)
            head[j] = torch.randn(1 + d, generator=g)  # norm jitter, then ε
            if bank is not None:
                bank[:, j] = torch.randn(nv, d, generator=g)  # ε_v, drawn after: same ε
        self.rows_generated += n
        if w.rank is None:
            clean = self._means[labels] + w.spread * head[:, 1:]
        else:
            clean = w.clean(labels, head[:, 1:], rowwise=True)  # rows independent of batch
        scale = w.feature_norm * (1 + 0.1 * head[:, :1])
        feats = (clean * scale).to(w.dtype)
        vbank = None
        if bank is not None:
            vbank = ((clean + w.view_noise * bank) * scale).to(w.dtype)
        return FeatureSet(feats, labels, vbank)

    def features(
        self, split: str, index: Sequence[int] | None = None, *, views: bool = False
    ) -> FeatureSet:
        if index is not None:
            # consecutive cells of one (shots, seed) ask for the same rows: keep the last one
            rows = tuple(int(i) for i in index)
            last = self._last.get((split, views))
            if last is None or last[0] != rows:
                last = self._last[(split, views)] = (rows, self._rows(split, rows, views))
            return last[1]
        key = f"{split}:{int(views)}"
        if key not in self._cache:
            self._cache[key] = self._rows(split, range(len(self.labels(split))), views)
        return self._cache[key]


@dataclass(frozen=True)
class SyntheticVariant:
    """A test-only dataset of another synthetic dataset's classes in a shifted domain (a
    stand-in for ImageNet-V2, -Sketch, -A, -R under ``domain-generalisation``).

    Attributes:
        of: the dataset whose world (class means, text weights) it shares.
        test: its number of test images, spread evenly over its classes.
        classes: keep this many of the world's classes, evenly spaced over the class ids (the
            200 of ImageNet-A/-R); ``None``: all, in order. The prepared ``class_index`` maps
            its classes to the world's.
        shift: the domain shift: extra isotropic noise on each image, in units of the world's
            within-class ``spread`` (0: the world's own test distribution).
    """

    of: str
    test: int
    classes: int | None = None
    shift: float = 1.0

    def class_ids(self, n_classes: int) -> list[int]:
        """The world's class ids it keeps, ascending."""
        if self.classes is None:
            return list(range(n_classes))
        if not 1 <= self.classes <= n_classes:
            raise InvalidValueError(
                f"classes: expected 1 to {n_classes} classes of {self.of!r}, found {self.classes}"
            )
        return sorted({(i * n_classes) // self.classes for i in range(self.classes)})


#: ImageNet's four variants over the synthetic ImageNet world, with their real test sizes; the
#: shifts are made up (larger for the harder domains).
SYNTHETIC_VARIANTS: Mapping[str, SyntheticVariant] = {
    "imagenet_v2": SyntheticVariant("imagenet", 10_000, None, 0.5),
    "imagenet_sketch": SyntheticVariant("imagenet", 50_889, None, 2.0),
    "imagenet_a": SyntheticVariant("imagenet", 7_500, 200, 3.0),
    "imagenet_r": SyntheticVariant("imagenet", 30_000, 200, 1.5),
}


def _variant_prepared(
    name: str,
    variant: SyntheticVariant,
    world: SyntheticWorld,
    backbone: str,
    seed: int,
    tower_for: Callable[[SyntheticWorld], Any],
) -> Prepared:
    """A variant's ``Prepared``: a ``test`` split only, generated in blocks from a stream keyed
    by (seed, name, backbone), over the classes it keeps (``class_index``: their ids in the
    world, ``None`` when it keeps all)."""
    from fewclip.protocol import InMemorySource

    if variant.shift < 0 or variant.test < 1:
        raise InvalidValueError(
            f"{name}: expected a positive test size and a non-negative shift, found "
            f"{variant.test} and {variant.shift}"
        )
    ids = variant.class_ids(world.n_classes)
    labels = torch.repeat_interleave(torch.arange(len(ids)), _counts(variant.test, len(ids)))
    digest = hashlib.sha256(f"{seed}/{name}/{backbone}/variant".encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") % 2**63)
    parts = []
    for block in labels.split(8192):
        eps = torch.randn(len(block), world.dim, generator=g)
        clean = world.clean(torch.as_tensor(ids)[block], eps)
        clean += variant.shift * world.spread * torch.randn(len(block), world.dim, generator=g)
        norms = world.feature_norm * (1 + 0.1 * torch.randn(len(block), 1, generator=g))
        parts.append((clean * norms).to(world.dtype))
    feats = torch.cat(parts)
    every = variant.classes is None
    return Prepared(
        source=InMemorySource(test=FeatureSet(feats, labels)),  # type: ignore[arg-type]
        classnames=[world.classnames[i] for i in ids],
        text_weights=world.text_weights[ids],
        class_index=None if every else ids,
        text_tower=tower_for(world),
        fingerprint="synthetic:"
        + hashlib.sha256(repr((name, variant, backbone, seed, world.seed)).encode()).hexdigest()[
            :16
        ],
        meta={
            "synthetic": True,
            "prompts": "synthetic",
            "variant_of": variant.of,
            "shift": variant.shift,
            "classes": len(ids),
            "sizes": {"test": variant.test},
        },
    )


def synthetic_prepare(
    *,
    shapes: Mapping[str, DatasetShape] | None = None,
    dim: int | None = None,
    n_views: int = 10,
    calibrate: bool = True,
    seed: int = 0,
    world_kwargs: Mapping[str, Any] | None = None,
    text_tower: bool = False,
    variants: Mapping[str, SyntheticVariant] | None = None,
) -> Callable[[str, str], Prepared]:
    """A ``prepare(dataset, backbone)`` for ``run_bench`` on synthetic worlds.

    Args:
        shapes: dataset name → sizes (default ``fewclip.testing.PRESETS``: the 11 benchmarks'
            real class counts and split sizes).
        dim: feature dimension (default: the shape's, 1024 = RN50).
        n_views: stored augmented views per training image.
        calibrate: ``True``: each of the 11 benchmarks with its own shape gets its calibrated
            preset, ``SyntheticWorld.from_preset(name, seed=seed)``: the structured world whose
            zero-shot and 16-shot Tip-Adapter accuracies are CLIP RN50's published ones
            (``fewclip.testing.calibration``; fitted at world seed 0). Any other shape gets the
            isotropic world with its text noise tuned to the dataset's zero-shot accuracy in
            ``ZERO_SHOT_TARGETS`` (when listed). ``False``: the isotropic world with
            ``world_kwargs`` only.
        seed: base world seed. A calibrated preset uses it as is, for every backbone name (at 0,
            the very world the knobs were fitted on; other seeds give alike worlds whose
            zero-shot accuracy scatters by a few points); any other world gets its own seed
            derived from (seed, dataset, backbone).
        world_kwargs: ``SyntheticWorld`` arguments (``sep``, ``spread``, ...); with a calibrated
            preset they override its knobs.
        text_tower: give every dataset a toy text tower
            (:class:`~fewclip.testing.text_tower.ToyTextTower`, seeded, of the features'
            dimension), so that the prompt learners (CoOp) run on the toy path too. Its text
            features are random functions of the class names ("class 0", ...): unrelated to
            the world's text weights.
        variants: test-only, domain-shifted datasets over another's world
            (``SyntheticVariant``), for the domain-generalisation protocol; default
            ``SYNTHETIC_VARIANTS``: ImageNet-V2, -Sketch, -A and -R over the ImageNet world.

    Synthetic features have no backbone: the backbone name only changes the seed of a world
    that is not a calibrated preset. The bench draws its rows from per-row streams
    (``SyntheticSource``), so even at seed 0 its test rows are not ``world.test_set()``'s: its
    accuracies differ from the calibrated ones by sampling noise.
    """
    table = dict(PRESETS if shapes is None else shapes)

    def resolve(dataset: str) -> str:
        if dataset in table:
            return dataset
        try:  # benchmark aliases and canonical names: pets, fgvc_aircraft, ...
            from fewclip.data.benchmarks.specs import get_spec

            name = get_spec(dataset).name
        except KeyError:
            name = dataset
        name = _PRESET_NAMES.get(name, name)
        if name not in table:
            raise NotFoundError(
                f"dataset {dataset!r}: no synthetic shape; known: {', '.join(sorted(table))}"
            )
        return name

    def world_of(
        dataset: str, backbone: str
    ) -> tuple[SyntheticWorld, DatasetShape, str, int, dict[str, Any], bool]:
        """The world of ``dataset`` on ``backbone`` (the same for the dataset and its
        variants): (world, shape, preset name, world seed, knobs, calibrated preset?)."""
        shape = table[resolve(dataset)]
        digest = hashlib.sha256(f"{seed}/{dataset}/{backbone}".encode()).digest()
        wseed = int.from_bytes(digest[:4], "little")
        kwargs = dict(world_kwargs or {})
        name = resolve(dataset)
        preset = calibrate and name in CALIBRATED and PRESETS.get(name) == shape
        if preset:
            wseed = seed
            world = SyntheticWorld.from_preset(name, dim=dim, seed=wseed, **kwargs)
            world.name = dataset
            kwargs = {**CLIP_RN50, **CALIBRATED[name], **kwargs}
        else:
            world = SyntheticWorld(
                shape.classes,
                dim or shape.dim,
                test_size=shape.test,
                val_size=shape.val,
                seed=wseed,
                name=dataset,
                **kwargs,
            )
            target = ZERO_SHOT_TARGETS.get(name)
            if calibrate and target is not None:
                world.calibrate(target, probe=10)
        return world, shape, name, wseed, kwargs, preset

    def tower_for(world: SyntheticWorld) -> Any:
        if not text_tower:
            return None
        from fewclip.testing.text_tower import ToyTextTower

        return ToyTextTower(world.dim, seed=seed)

    shifted = dict(SYNTHETIC_VARIANTS if variants is None else variants)

    def prepare(dataset: str, backbone: str) -> Prepared:
        if dataset in shifted and dataset not in table:
            return _variant_prepared(
                dataset, shifted[dataset], world_of(shifted[dataset].of, backbone)[0],
                backbone, seed, tower_for,
            )  # fmt: skip
        world, shape, name, wseed, kwargs, preset = world_of(dataset, backbone)
        source = SyntheticSource(
            world, {"train": shape.train, "val": shape.val, "test": shape.test}, n_views=n_views
        )
        fingerprint = (
            "synthetic:"
            + hashlib.sha256(
                repr(
                    (
                        dataset,
                        backbone,
                        wseed,
                        shape,
                        dim,
                        n_views,
                        calibrate,
                        sorted(kwargs.items()),
                        *(("calibrated-preset",) if preset else ()),
                    )
                ).encode()
            ).hexdigest()[:16]
        )
        return Prepared(
            source=source,
            classnames=world.classnames,
            text_weights=world.text_weights,
            text_tower=tower_for(world),
            fingerprint=fingerprint,
            meta={
                "synthetic": True,
                "prompts": "synthetic",
                "n_views": n_views,
                "classes": shape.classes,
                "sizes": {"train": shape.train, "val": shape.val, "test": shape.test},
                "dim": dim or shape.dim,
                "text_noise": world.text_noise,
                **({"calibrated_preset": name} if preset else {}),
            },
        )

    return prepare
