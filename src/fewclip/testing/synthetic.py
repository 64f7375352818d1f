"""Synthetic CLIP-like feature worlds for tests, benchmarks and users' own tests.

A world has C classes in D dimensions, ε, ε', η ~ N(0, I_D) are per-image, per-view and
per-class draws, and every raw feature is ``s·(...)`` with a per-image norm s around
``feature_norm`` (raw features are not unit-norm, as CLIP's are not). Two models:

**Isotropic** (``rank=None``, the default of an explicit-knob world). With u_c ~ N(0, I/D) (a
vector of norm ≈ 1) and a shared unit direction m:

- class means ``μ_c = m + sep·u_c`` (classes share a cone, as CLIP image features do);
- an image of class c is ``s·(μ_c + spread·ε)`` (``spread`` is a per-coordinate standard
  deviation);
- an augmented view of that image adds ``view_noise·ε'`` before scaling;
- the text prototype is ``t_c = normalise(μ_c + gap·g + text_noise·η_c)``: offset from the image
  mean by a shared modality gap g and perturbed so that zero-shot is imperfect.

**Structured** (``rank=r``; the calibrated presets). B is an orthonormal (D, r) basis of the class
subspace, m a unit cone axis orthogonal to B, g a unit gap direction orthogonal to both, z_c a
unit vector of R^r and ζ_c ~ N(0, I_r/r):

- class means ``μ_c = m + sep·B·z_c``: every class at the same distance from the axis, so the
  nearest-mean rule is the best one for a perfectly aligned text;
- an image of class c is ``s·(μ_c + spread·ε + B·diag(k)·Bᵀε)``: isotropic noise plus
  within-class spread along the class subspace, ``k_i = sep·class_spread·a_i/√r`` with
  ``a_i ∝ exp(anisotropy·u_i)`` (u_i evenly spaced in [−½, ½], mean a_i² = 1). Classes are
  confusable along the subspace, and a learned (whitening) classifier beats the nearest
  mean, as trained adapters beat a cache on real features;
- an augmented view adds ``view_noise·ε'`` (views stay near their image);
- the text prototype is ``t_c = normalise(m + text_scale·sep·B·(z_c + misalign·ζ_c) + gap·g
  + text_noise·η⊥_c)``: the image mean's class part scaled by ``text_scale`` (the contrast of
  the zero-shot logits), misaligned inside the class subspace (what few-shot data corrects),
  offset by the modality gap, plus text-only noise η⊥_c (η_c without its part in span(B, m, g)).

The structured model's noise is drawn in float32 from the same streams, so a structured world
is lazy and reproducible as the isotropic one is. ``SyntheticWorld.from_preset(name)`` builds
the 11 benchmarks' shapes with ``CLIP_RN50`` and the fitted ``CALIBRATED[name]`` knobs: at
world seed 0 their zero-shot and 16-shot Tip-Adapter accuracies are CLIP RN50's published ones
(``fewclip.testing.calibration``).

``calibrate(target)`` picks the text's error (``text_noise``, or ``misalign`` in the structured
model) by bisection so that zero-shot accuracy on a probe sample is close to a target.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fewclip.errors import InvalidValueError, NotFoundError
from fewclip.functional import l2_normalize
from fewclip.task import FeatureSet, Task

__all__ = ["CALIBRATED", "CLIP_RN50", "PRESETS", "DatasetShape", "SyntheticWorld"]


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

#: Knobs shared by the calibrated presets (structured model, CLIP RN50-like, D = 1024): a
#: 16-dimensional class subspace with a 1.6 log-ratio of within-class standard deviations along
#: it; isotropic noise, augmented views, modality gap and text-only noise fixed for all.
CLIP_RN50: dict[str, float | int] = {
    "rank": 16,
    "sep": 1.0,
    "spread": 0.017,
    "anisotropy": 1.6,
    "view_noise": 0.02,
    "gap": 1.6,
    "text_noise": 0.03,
}

#: Per-preset knobs fitted by ``scripts/calibrate_worlds.py`` (world seed 0, D = 1024): each
#: preset's zero-shot and 16-shot Tip-Adapter accuracies land on CLIP RN50's published numbers
#: (``fewclip.testing.calibration.TARGETS``), with zero-shot confidence equal to zero-shot
#: accuracy. The comments give what the script measured; do not edit by hand.
# BEGIN CALIBRATED (written by scripts/calibrate_worlds.py)
CALIBRATED: dict[str, dict[str, float]] = {
    # zero-shot 60.33 (target 60.33), Tip-Adapter@16 62.15 (target 62.03)
    "imagenet": {"class_spread": 0.86126, "misalign": 0.09601, "text_scale": 0.67184},
    # zero-shot 85.92 (target 85.92), Tip-Adapter@16 90.10 (target 90.18)
    "caltech101": {"class_spread": 0.79536, "misalign": 0.24752, "text_scale": 0.62356},
    # zero-shot 85.83 (target 85.83), Tip-Adapter@16 88.09 (target 88.14)
    "oxford_pets": {"class_spread": 0.94163, "misalign": 0.26634, "text_scale": 0.49522},
    # zero-shot 55.75 (target 55.74), Tip-Adapter@16 66.76 (target 66.77)
    "stanford_cars": {"class_spread": 0.98553, "misalign": 0.34297, "text_scale": 0.39824},
    # zero-shot 66.02 (target 66.02), Tip-Adapter@16 89.81 (target 89.89)
    "oxford_flowers": {"class_spread": 0.78352, "misalign": 0.61239, "text_scale": 0.37269},
    # zero-shot 76.74 (target 77.32), Tip-Adapter@16 77.87 (target 77.83)
    "food101": {"class_spread": 1.00229, "misalign": 0.0, "text_scale": 0.53541},
    # zero-shot 17.07 (target 17.1), Tip-Adapter@16 29.70 (target 29.76)
    "fgvc": {"class_spread": 1.68804, "misalign": 0.81981, "text_scale": 0.11338},
    # zero-shot 58.52 (target 58.52), Tip-Adapter@16 66.82 (target 66.85)
    "sun397": {"class_spread": 0.90217, "misalign": 0.26708, "text_scale": 0.51469},
    # zero-shot 42.20 (target 42.2), Tip-Adapter@16 60.99 (target 60.93)
    "dtd": {"class_spread": 1.33424, "misalign": 0.62739, "text_scale": 0.19271},
    # zero-shot 37.54 (target 37.52), Tip-Adapter@16 70.44 (target 70.54)
    "eurosat": {"class_spread": 1.65206, "misalign": 1.59363, "text_scale": 0.05604},
    # zero-shot 61.33 (target 61.35), Tip-Adapter@16 70.63 (target 70.58)
    "ucf101": {"class_spread": 1.03942, "misalign": 0.35346, "text_scale": 0.37661},
}
# END CALIBRATED


def _split_counts(total: int, classes: int) -> Tensor:
    """``total`` images over ``classes`` classes as evenly as possible (first classes get more)."""
    base, extra = divmod(total, classes)
    return torch.tensor([base + (1 if c < extra else 0) for c in range(classes)])


class SyntheticWorld:
    """A reproducible CLIP-like feature world (see the module docstring for both models).

    Args:
        n_classes: number of classes C.
        dim: feature dimension D (1024 for RN50, 512 for ViT-B).
        sep: distance scale between class means (isotropic model: two means lie ≈ sep·√2
            apart; structured model: every mean lies at distance sep from the cone axis).
        spread: isotropic within-class standard deviation per coordinate.
        view_noise: per-coordinate spread of augmented views around their image.
        gap: size of the shared text-image modality gap.
        text_noise: per-coordinate perturbation of the text prototypes (isotropic model: larger
            → worse zero-shot; structured model: text-only, off the image subspace).
        feature_norm: typical norm of raw features.
        test_size: number of test images (spread evenly over classes); default 50 per class.
        val_size: size of the full validation split (``full-val``); default 20 per class.
        seed: world seed; every sample is a deterministic function of it and the draw seed.
        dtype: dtype of the generated features.
        name: the dataset name recorded in tasks.
        rank: dimension r of the class subspace; ``None`` (default) is the isotropic model, any
            value the structured model, which the knobs below belong to.
        class_spread: within-class spread along the class subspace, relative to ``sep``.
        anisotropy: log-ratio of the largest to the smallest within-class standard deviation
            along the class subspace (0: isotropic there).
        misalign: per-class misalignment of the text prototypes inside the class subspace,
            relative to ``sep`` (what few-shot data corrects).
        text_scale: the text prototypes' class-specific part relative to the image means'
            (the contrast of the zero-shot logits).
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
        rank: int | None = None,
        class_spread: float = 0.0,
        anisotropy: float = 0.0,
        misalign: float = 0.0,
        text_scale: float = 1.0,
    ):
        if n_classes < 2 or dim < 2:
            raise InvalidValueError(
                f"n_classes and dim: expected at least 2 each, found {n_classes} and {dim}"
            )
        if rank is not None and not 1 <= rank < dim:
            raise InvalidValueError(
                f"rank: expected a class subspace dimension in [1, dim={dim}), found {rank}"
            )
        structured = {
            "class_spread": (class_spread, 0.0),
            "anisotropy": (anisotropy, 0.0),
            "misalign": (misalign, 0.0),
            "text_scale": (text_scale, 1.0),
        }
        if rank is None and any(v != default for v, default in structured.values()):
            used = [k for k, (v, default) in structured.items() if v != default]
            raise InvalidValueError(
                f"{', '.join(used)}: only the structured model has them; pass rank=R "
                "(e.g. rank=16) or leave them at their defaults"
            )
        negative = [k for k, (v, _) in structured.items() if v < 0]
        if negative:
            raise InvalidValueError(
                f"{', '.join(negative)}: expected non-negative values, found "
                + ", ".join(str(structured[k][0]) for k in negative)
            )
        self.n_classes, self.dim, self.name = n_classes, dim, name
        self.sep, self.spread, self.view_noise = sep, spread, view_noise
        self.gap, self.feature_norm, self.seed, self.dtype = gap, feature_norm, seed, dtype
        self.rank, self.class_spread, self.anisotropy = rank, class_spread, anisotropy
        self.misalign, self.text_scale = misalign, text_scale
        self.test_size = test_size if test_size is not None else 50 * n_classes
        self.val_size = val_size if val_size is not None else 20 * n_classes
        g = self._gen(_STREAM_WORLD)
        m = l2_normalize(torch.randn(dim, generator=g, dtype=torch.float64))
        u = torch.randn(n_classes, dim, generator=g, dtype=torch.float64) / dim**0.5
        self._gap_dir = l2_normalize(torch.randn(dim, generator=g, dtype=torch.float64))
        self._text_eta = torch.randn(n_classes, dim, generator=g, dtype=torch.float64)
        self._basis: Tensor | None = None
        self._offsets = self._shift = torch.zeros(0, dtype=torch.float64)
        self._axis = m
        if rank is None:
            self._means = m + sep * u
        else:  # drawn after the isotropic model's draws, which stay as they were
            basis = torch.linalg.qr(torch.randn(dim, rank, generator=g, dtype=torch.float64))[0]
            z = l2_normalize(torch.randn(n_classes, rank, generator=g, dtype=torch.float64))
            zeta = torch.randn(n_classes, rank, generator=g, dtype=torch.float64) / rank**0.5
            # the cone axis, then the gap and the text noise, each orthogonal to what came before
            self._axis = m = l2_normalize(m - basis @ (basis.T @ m))
            image = torch.cat([basis, m[:, None]], dim=1)
            self._gap_dir = l2_normalize(self._gap_dir - image @ (image.T @ self._gap_dir))
            image = torch.cat([image, self._gap_dir[:, None]], dim=1)
            self._text_eta = self._text_eta - (self._text_eta @ image) @ image.T
            self._basis = basis
            self._offsets = sep * (z @ basis.T)  # (C, D): μ_c − m
            self._shift = sep * (zeta @ basis.T)  # (C, D): the text misalignment directions
            self._means = m + self._offsets
        self.text_noise = text_noise
        self.classnames = [f"class {i}" for i in range(n_classes)]

    # -- construction helpers ---------------------------------------------------------------
    @classmethod
    def from_preset(
        cls,
        name: str,
        *,
        calibrated: bool = True,
        dim: int | None = None,
        seed: int = 0,
        **kwargs: object,
    ) -> SyntheticWorld:
        """A world with the real class count and split sizes of benchmark ``name`` (PRESETS).

        ``calibrated=True`` (default) builds the structured world with ``CLIP_RN50`` and the
        preset's fitted ``CALIBRATED[name]`` knobs: at ``seed=0``, ``dim=1024`` and the
        preset's test size its zero-shot and 16-shot Tip-Adapter accuracies land on CLIP RN50's
        published numbers (``fewclip.testing.calibration``); other seeds give statistically
        alike worlds. ``calibrated=False`` builds the isotropic model with its defaults.
        ``kwargs`` override single knobs either way.
        """
        if name not in PRESETS:
            raise NotFoundError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}")
        shape = PRESETS[name]
        knobs: dict[str, object] = {}
        if calibrated:
            knobs = {**CLIP_RN50, **CALIBRATED[name]}
        knobs.update(kwargs)
        return cls(
            shape.classes,
            dim or shape.dim,
            test_size=shape.test,
            val_size=shape.val,
            seed=seed,
            name=name,
            **knobs,  # type: ignore[arg-type]
        )

    def _gen(self, stream: int, draw: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed((self.seed * 1_000_003 + stream * 7919 + draw) % 2**63)

    @property
    def text_weights(self) -> Tensor:
        """(C, D) L2-normalised text classifier."""
        if self._basis is None:
            t = self._means + self.gap * self._gap_dir + self.text_noise * self._text_eta
        else:
            t = (
                self._axis
                + self.text_scale * (self._offsets + self.misalign * self._shift)
                + self.gap * self._gap_dir
                + self.text_noise * self._text_eta
            )
        return l2_normalize(t).to(self.dtype)

    # -- sampling ---------------------------------------------------------------------------
    def sample(
        self, counts: Tensor | list[int], *, stream: int, draw: int = 0, views: int = 0
    ) -> FeatureSet:
        """Images with ``counts[c]`` per class (labels in class order) and ``views`` views each.

        Noise is drawn in float64 for the isotropic model and in float32 for the structured one
        (about 4× faster, and plenty for synthetic features).
        """
        counts = torch.as_tensor(counts)
        g = self._gen(stream, draw)
        labels = torch.repeat_interleave(torch.arange(self.n_classes), counts)
        n, d = len(labels), self.dim
        wdt = torch.float64 if self._basis is None else torch.float32
        clean = self.clean(labels, torch.randn(n, d, generator=g, dtype=wdt))
        norms = self.feature_norm * (1 + 0.1 * torch.randn(n, 1, generator=g, dtype=wdt))
        feats = (clean * norms).to(self.dtype)
        bank = None
        if views:
            noise = torch.randn(views, n, d, generator=g, dtype=wdt)
            # in place: (clean + view_noise·ε')·s without three (V, N, D) temporaries
            bank = noise.mul_(self.view_noise).add_(clean).mul_(norms).to(self.dtype)
        return FeatureSet(feats, labels, bank)

    def clean(self, labels: Tensor, eps: Tensor, *, rowwise: bool = False) -> Tensor:
        """Unscaled image features of classes ``labels`` (N,) from standard normal draws ``eps``
        (N, D), in ``eps``'s dtype: ``μ_c + spread·ε``, plus ``B·diag(k)·Bᵀε`` in the structured
        model (``k = within_class_std()``).

        ``rowwise=True`` computes the structured part one row at a time, so that a row's
        features do not depend on which other rows were computed with it (a batched matrix
        product may round differently for different batch sizes); slower.
        """
        out = self._means.to(eps.dtype)[labels] + self.spread * eps
        if self._basis is not None and self.class_spread and len(eps):
            b = self._basis.to(eps.dtype)
            k = self.within_class_std().to(eps.dtype)
            if rowwise:
                bt = b.T.contiguous()
                out += torch.stack([((e @ b) * k) @ bt for e in eps])
            else:
                out += ((eps @ b) * k) @ b.T
        return out

    def within_class_std(self) -> Tensor:
        """(r,) extra standard deviations along the class subspace's basis vectors:
        ``k_i = sep·class_spread·a_i/√r`` with ``a_i ∝ exp(anisotropy·u_i)``, ``u_i`` evenly
        spaced in [−½, ½] and ``mean(a_i²) = 1`` (structured model; empty otherwise)."""
        if self._basis is None:
            return torch.zeros(0, dtype=torch.float64)
        r = self._basis.shape[1]
        u = torch.linspace(-0.5, 0.5, r, dtype=torch.float64) if r > 1 else torch.zeros(1)
        a = torch.exp(self.anisotropy * u)
        return self.sep * self.class_spread / r**0.5 * a / a.square().mean().sqrt()

    def support(self, shots: int, *, seed: int = 1, views: int = 10) -> FeatureSet:
        """``shots`` images per class; nested in ``shots`` for one ``seed`` (1-shot ⊂ 2-shot …)."""
        if shots < 1:
            raise InvalidValueError(f"shots: expected a positive integer, found {shots}")
        pool = max(shots, 16)
        full = self.sample([pool] * self.n_classes, stream=_STREAM_SUPPORT, draw=seed, views=views)
        if shots == pool:
            return full
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
        """Set the text's error so that zero-shot accuracy is close to ``target`` (0–1); returns
        self.

        The knob is ``text_noise`` in the isotropic model and ``misalign`` in the structured one.
        Bisection on a probe sample of ``probe`` images per class (accuracy falls as the knob
        grows).
        """
        if not 0.0 < target < 1.0:
            raise InvalidValueError(f"target: expected an accuracy in (0, 1), found {target}")
        fs = self.sample([probe] * self.n_classes, stream=_STREAM_VAL, draw=10_000)
        knob = "text_noise" if self._basis is None else "misalign"
        lo, hi = 0.0, 0.1
        setattr(self, knob, hi)
        while self.zero_shot_accuracy(fs) > target and hi < 1e4:
            lo, hi = hi, hi * 2
            setattr(self, knob, hi)
        for _ in range(iters):
            setattr(self, knob, (lo + hi) / 2)
            if self.zero_shot_accuracy(fs) > target:
                lo = getattr(self, knob)
            else:
                hi = getattr(self, knob)
        return self
