"""Synthetic CLIP-like feature worlds for tests, benchmarks and users' own tests.

A world has C classes in D dimensions. With u_c ~ N(0, I/D) (a vector of norm ≈ 1), ε, ε', η
~ N(0, I) and a shared unit direction m:

- class means ``μ_c = m + sep·u_c`` (classes share a cone, as CLIP image features do);
- an image of class c is ``s·(μ_c + spread·ε)`` (``spread`` is a per-coordinate standard
  deviation, so difficulty does not change with D) with a per-image norm s around ``feature_norm``
  (raw features are not unit-norm, as CLIP's are not);
- an augmented view of that image adds ``view_noise·ε'`` before scaling;
- the text prototype is ``t_c = normalise(μ_c + gap·g + text_noise·η_c)``: offset from the image
  mean by a shared modality gap g and perturbed so that zero-shot is imperfect.

``zero_shot_accuracy`` (with ``calibrate=True``) picks ``text_noise`` by bisection so that
zero-shot accuracy on the test set is close to a target.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fewclip.errors import InvalidValueError, NotFoundError
from fewclip.functional import l2_normalize
from fewclip.task import FeatureSet, Task

__all__ = ["PRESETS", "DatasetShape", "SyntheticWorld"]


@dataclass(frozen=True)
class DatasetShape:
    """Sizes of a benchmark dataset (CoOp splits): classes and train/val/test image counts."""

    name: str
    classes: int
    train: int
    val: int
    test: int
    dim: int = 1024


#: The 11 few-shot benchmarks with their CoOp split sizes (ImageNet has no val split: CoOp and
#: Tip-Adapter use the test set in its place, which is exactly the leak fewclip avoids).
PRESETS: dict[str, DatasetShape] = {
    s.name: s
    for s in (
        DatasetShape("imagenet", 1000, 1_281_167, 0, 50_000),
        DatasetShape("caltech101", 100, 4_128, 1_649, 2_465),
        DatasetShape("oxford_pets", 37, 2_944, 736, 3_669),
        DatasetShape("stanford_cars", 196, 6_509, 1_635, 8_041),
        DatasetShape("oxford_flowers", 102, 4_093, 1_633, 2_463),
        DatasetShape("food101", 101, 50_500, 20_200, 30_300),
        DatasetShape("fgvc", 100, 3_334, 3_333, 3_333),
        DatasetShape("sun397", 397, 15_880, 3_970, 19_850),
        DatasetShape("dtd", 47, 2_820, 1_128, 1_692),
        DatasetShape("eurosat", 10, 13_500, 5_400, 8_100),
        DatasetShape("ucf101", 101, 7_639, 1_898, 3_783),
    )
}

_STREAM_SUPPORT, _STREAM_VAL, _STREAM_TEST, _STREAM_WORLD = 1, 2, 3, 0


def _split_counts(total: int, classes: int) -> Tensor:
    """``total`` images over ``classes`` classes as evenly as possible (first classes get more)."""
    base, extra = divmod(total, classes)
    return torch.tensor([base + (1 if c < extra else 0) for c in range(classes)])


class SyntheticWorld:
    """A reproducible CLIP-like feature world (see the module docstring for the model).

    Args:
        n_classes: number of classes C.
        dim: feature dimension D (1024 for RN50, 512 for ViT-B).
        sep: distance scale between class means (two means lie ≈ sep·√2 apart).
        spread: within-class standard deviation per coordinate (larger is harder).
        view_noise: per-coordinate spread of augmented views around their image.
        gap: size of the shared text-image modality gap.
        text_noise: per-coordinate perturbation of the text prototypes (larger → worse
            zero-shot).
        feature_norm: typical norm of raw features.
        test_size: number of test images (spread evenly over classes); default 50 per class.
        val_size: size of the full validation split (``full-val``); default 20 per class.
        seed: world seed; every sample is a deterministic function of it and the draw seed.
        dtype: dtype of the generated features.
    """

    def __init__(
        self,
        n_classes: int,
        dim: int = 1024,
        *,
        sep: float = 0.1,
        spread: float = 0.03,
        view_noise: float = 0.02,
        gap: float = 0.5,
        text_noise: float = 0.005,
        feature_norm: float = 10.0,
        test_size: int | None = None,
        val_size: int | None = None,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        name: str = "synthetic",
    ):
        if n_classes < 2 or dim < 2:
            raise InvalidValueError(
                f"n_classes and dim: expected at least 2 each, found {n_classes} and {dim}"
            )
        self.n_classes, self.dim, self.name = n_classes, dim, name
        self.sep, self.spread, self.view_noise = sep, spread, view_noise
        self.gap, self.feature_norm, self.seed, self.dtype = gap, feature_norm, seed, dtype
        self.test_size = test_size if test_size is not None else 50 * n_classes
        self.val_size = val_size if val_size is not None else 20 * n_classes
        g = self._gen(_STREAM_WORLD)
        m = l2_normalize(torch.randn(dim, generator=g, dtype=torch.float64))
        u = torch.randn(n_classes, dim, generator=g, dtype=torch.float64) / dim**0.5
        self._means = m + sep * u
        self._gap_dir = l2_normalize(torch.randn(dim, generator=g, dtype=torch.float64))
        self._text_eta = torch.randn(n_classes, dim, generator=g, dtype=torch.float64)
        self.text_noise = text_noise
        self.classnames = [f"class {i}" for i in range(n_classes)]

    # -- construction helpers ---------------------------------------------------------------
    @classmethod
    def from_preset(
        cls, name: str, *, dim: int | None = None, seed: int = 0, **kwargs: object
    ) -> SyntheticWorld:
        """A world with the real class count and split sizes of benchmark ``name`` (PRESETS)."""
        if name not in PRESETS:
            raise NotFoundError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}")
        shape = PRESETS[name]
        return cls(
            shape.classes,
            dim or shape.dim,
            test_size=shape.test,
            val_size=shape.val,
            seed=seed,
            name=name,
            **kwargs,  # type: ignore[arg-type]
        )

    def _gen(self, stream: int, draw: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed((self.seed * 1_000_003 + stream * 7919 + draw) % 2**63)

    @property
    def text_weights(self) -> Tensor:
        """(C, D) L2-normalised text classifier."""
        t = self._means + self.gap * self._gap_dir + self.text_noise * self._text_eta
        return l2_normalize(t).to(self.dtype)

    # -- sampling ---------------------------------------------------------------------------
    def sample(
        self, counts: Tensor | list[int], *, stream: int, draw: int = 0, views: int = 0
    ) -> FeatureSet:
        """Images with ``counts[c]`` per class (labels in class order) and ``views`` views each."""
        counts = torch.as_tensor(counts)
        g = self._gen(stream, draw)
        labels = torch.repeat_interleave(torch.arange(self.n_classes), counts)
        n, d = len(labels), self.dim
        clean = self._means[labels] + self.spread * torch.randn(
            n, d, generator=g, dtype=torch.float64
        )
        norms = self.feature_norm * (1 + 0.1 * torch.randn(n, 1, generator=g, dtype=torch.float64))
        feats = (clean * norms).to(self.dtype)
        bank = None
        if views:
            noise = torch.randn(views, n, d, generator=g, dtype=torch.float64)
            bank = ((clean + self.view_noise * noise) * norms).to(self.dtype)
        return FeatureSet(feats, labels, bank)

    def support(self, shots: int, *, seed: int = 1, views: int = 10) -> FeatureSet:
        """``shots`` images per class; nested in ``shots`` for one ``seed`` (1-shot ⊂ 2-shot …)."""
        if shots < 1:
            raise InvalidValueError(f"shots: expected a positive integer, found {shots}")
        pool = max(shots, 16)
        full = self.sample([pool] * self.n_classes, stream=_STREAM_SUPPORT, draw=seed, views=views)
        keep = (torch.arange(len(full.labels)) % pool) < shots
        return full.subset(torch.nonzero(keep).flatten())

    def validation(self, per_class: int | None = None, *, seed: int = 1) -> FeatureSet:
        """``per_class`` images per class (few-shot val), or the full val split when ``None``."""
        counts = (
            _split_counts(self.val_size, self.n_classes)
            if per_class is None
            else [per_class] * self.n_classes
        )
        return self.sample(counts, stream=_STREAM_VAL, draw=seed)

    def test_set(self) -> FeatureSet:
        """The fixed test split (``test_size`` images)."""
        return self.sample(_split_counts(self.test_size, self.n_classes), stream=_STREAM_TEST)

    def task(
        self,
        shots: int,
        *,
        seed: int = 1,
        views: int = 10,
        val: str = "fewshot",
    ) -> Task:
        """A few-shot Task: ``shots`` per class with ``views`` views, and a validation set.

        ``val``: ``"fewshot"`` (min(shots, 4) per class, disjoint from the support set),
        ``"full"`` (the whole val split) or ``"none"``.
        """
        if val not in ("fewshot", "full", "none"):
            raise InvalidValueError(f"val: expected 'fewshot', 'full' or 'none', found {val!r}")
        vset = None
        if val == "fewshot":
            vset = self.validation(min(shots, 4), seed=seed)
        elif val == "full":
            vset = self.validation(None, seed=seed)
        return Task(
            self.classnames,
            self.text_weights,
            self.support(shots, seed=seed, views=views),
            vset,
            meta={"dataset": self.name, "shots": shots, "seed": seed, "synthetic": True},
        )

    # -- calibration ------------------------------------------------------------------------
    def zero_shot_accuracy(self, features: FeatureSet | None = None) -> float:
        """Zero-shot top-1 accuracy (0–1) of ``100·x·Wᵀ`` on ``features`` (default: test set)."""
        fs = features if features is not None else self.test_set()
        pred = (l2_normalize(fs.features) @ self.text_weights.T).argmax(1)
        return float((pred == fs.labels).float().mean())

    def calibrate(self, target: float, *, probe: int = 20, iters: int = 25) -> SyntheticWorld:
        """Set ``text_noise`` so that zero-shot accuracy is close to ``target`` (0–1); returns self.

        Bisection on a probe sample of ``probe`` images per class (accuracy falls as the noise
        grows).
        """
        if not 0.0 < target < 1.0:
            raise InvalidValueError(f"target: expected an accuracy in (0, 1), found {target}")
        fs = self.sample([probe] * self.n_classes, stream=_STREAM_VAL, draw=10_000)
        lo, hi = 0.0, 0.1
        self.text_noise = hi
        while self.zero_shot_accuracy(fs) > target and hi < 1e4:
            lo, hi = hi, hi * 2
            self.text_noise = hi
        for _ in range(iters):
            self.text_noise = (lo + hi) / 2
            if self.zero_shot_accuracy(fs) > target:
                lo = self.text_noise
            else:
                hi = self.text_noise
        return self
