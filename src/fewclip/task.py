"""What a method is fitted on: support features (with augmented views), text weights, validation.

Everything here is pure tensors. Features are stored **raw** (un-normalised, as the image encoder
returns them); each method normalises where its formula says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from fewclip.errors import InvalidTypeError, InvalidValueError
from fewclip.text_tower import TextTower

__all__ = ["FeatureSet", "Task", "check_features", "check_labels"]


def check_features(name: str, x: object, *, dim: int | None = None, ndim: int = 2) -> Tensor:
    """Validate a floating feature tensor and return it.

    Raises ``TypeError``/``ValueError`` naming ``name`` when ``x`` is not a floating tensor of
    ``ndim`` dimensions, when its last dimension is not ``dim`` (if given), or when it holds NaN or
    infinite values.
    """
    if not isinstance(x, Tensor):
        raise InvalidTypeError(f"{name}: expected a torch.Tensor, found {type(x).__name__}")
    if not x.is_floating_point():
        raise InvalidTypeError(f"{name}: expected a floating-point tensor, found dtype {x.dtype}")
    if x.ndim != ndim:
        raise InvalidValueError(
            f"{name}: expected {ndim} dimensions, found shape {tuple(x.shape)} ({x.ndim} dims)"
        )
    if dim is not None and x.shape[-1] != dim:
        raise InvalidValueError(
            f"{name}: expected feature dimension {dim}, found {x.shape[-1]} "
            f"(shape {tuple(x.shape)})"
        )
    # max and min are NaN or ±∞ exactly when an entry is: two fast reductions, no mask of x
    if x.numel() and not (bool(torch.isfinite(x.amax())) and bool(torch.isfinite(x.amin()))):
        bad = int((~torch.isfinite(x)).sum())
        raise InvalidValueError(f"{name}: expected finite values, found {bad} NaN/inf entries")
    return x


def check_labels(name: str, y: object, *, n: int, n_classes: int | None = None) -> Tensor:
    """Validate integer class ids of length ``n`` in ``[0, n_classes)``; returns them as int64."""
    if not isinstance(y, Tensor):
        raise InvalidTypeError(
            f"{name}: expected a torch.Tensor of class ids, found {type(y).__name__}"
        )
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise InvalidTypeError(f"{name}: expected integer class ids, found dtype {y.dtype}")
    if y.ndim != 1 or y.shape[0] != n:
        raise InvalidValueError(f"{name}: expected shape ({n},), found {tuple(y.shape)}")
    y = y.long()
    if n and n_classes is not None:
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= n_classes:
            raise InvalidValueError(
                f"{name}: class ids must lie in [0, {n_classes}), found range [{lo}, {hi}]"
            )
    return y


@dataclass(frozen=True, eq=False)
class FeatureSet:
    """Raw image features of one split with their labels.

    Attributes:
        features: (N, D) raw features of the plain (evaluation-transform) images.
        labels: (N,) int64 class ids.
        views: optional (V, N, D) raw features of V augmented views of the same images, in the
            same order. Tip-Adapter's cache keys average them; trained methods draw one view per
            image per epoch.
    """

    features: Tensor
    labels: Tensor
    views: Tensor | None = None

    def __post_init__(self) -> None:
        feats = check_features("features", self.features)
        labels = check_labels("labels", self.labels, n=feats.shape[0])
        object.__setattr__(self, "labels", labels)
        if self.views is not None:
            views = check_features("views", self.views, dim=feats.shape[1], ndim=3)
            if views.shape[1] != feats.shape[0]:
                raise InvalidValueError(
                    f"views: expected {feats.shape[0]} images per view (as in features), "
                    f"found shape {tuple(views.shape)}"
                )
            if views.shape[0] == 0:
                raise InvalidValueError("views: expected at least one view, found 0")

    @property
    def n(self) -> int:
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def n_views(self) -> int:
        return 0 if self.views is None else int(self.views.shape[0])

    def view_bank(self) -> Tensor:
        """(V, N, D) augmented views, or the plain features as a single view when there are none."""
        return self.views if self.views is not None else self.features.unsqueeze(0)

    def subset(self, index: Tensor | Sequence[int]) -> FeatureSet:
        """The rows ``index`` (features, labels and every view)."""
        idx = torch.as_tensor(index, dtype=torch.long)
        views = None if self.views is None else self.views[:, idx]
        return FeatureSet(self.features[idx], self.labels[idx], views)


@dataclass(frozen=True, eq=False)
class Task:
    """A few-shot task: everything a method may see while fitting.

    Test features are deliberately not part of a Task: search and training only ever receive
    support and validation features (see ``fewclip.protocol``).

    Attributes:
        classnames: the C class names, in class-id order.
        text_weights: (C, D) zero-shot text classifier (``functional.text_classifier``).
        support: labelled few-shot images (with augmented views where available).
        val: optional validation images for hyper-parameter and epoch selection.
        meta: free-form JSON-able record (dataset, shots, seed, protocol, prompts, backbone id).
        text_tower: the backbone's text encoder below the tokenizer
            (:class:`fewclip.text_tower.TextTower`, from ``backbone.text_tower()``), for the
            prompt learners (CoOp); ``None`` for every other method.
    """

    classnames: list[str]
    text_weights: Tensor
    support: FeatureSet
    val: FeatureSet | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    text_tower: TextTower | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        names = list(self.classnames)
        if not names:
            raise InvalidValueError("classnames: expected at least one class, found none")
        object.__setattr__(self, "classnames", names)
        c = len(names)
        w = check_features("text_weights", self.text_weights)
        if w.shape[0] != c:
            raise InvalidValueError(
                f"text_weights: expected one row per class ({c} classnames), "
                f"found shape {tuple(w.shape)}"
            )
        if not isinstance(self.support, FeatureSet):
            raise InvalidTypeError(
                f"support: expected a FeatureSet, found {type(self.support).__name__}"
            )
        d = w.shape[1]
        if self.support.dim != d:
            raise InvalidValueError(
                f"support: feature dimension {self.support.dim} does not match "
                f"text_weights dimension {d}"
            )
        check_labels("support.labels", self.support.labels, n=self.support.n, n_classes=c)
        counts = torch.bincount(self.support.labels, minlength=c)
        empty = [names[i] for i in torch.nonzero(counts == 0).flatten().tolist()]
        if empty:
            shown = ", ".join(repr(e) for e in empty[:10])
            more = f" and {len(empty) - 10} more" if len(empty) > 10 else ""
            raise InvalidValueError(
                f"support: every class needs at least one support image; "
                f"{len(empty)} classes have none: {shown}{more}"
            )
        if self.val is not None:
            if not isinstance(self.val, FeatureSet):
                raise InvalidTypeError(
                    f"val: expected a FeatureSet, found {type(self.val).__name__}"
                )
            if self.val.dim != d:
                raise InvalidValueError(
                    f"val: feature dimension {self.val.dim} does not match "
                    f"text_weights dimension {d}"
                )
            check_labels("val.labels", self.val.labels, n=self.val.n, n_classes=c)
        if self.text_tower is not None:
            if not isinstance(self.text_tower, TextTower):
                raise InvalidTypeError(
                    "text_tower: expected a fewclip.text_tower.TextTower (backbone.text_tower()), "
                    f"found {type(self.text_tower).__name__}"
                )
            if self.text_tower.embed_dim != d:
                raise InvalidValueError(
                    f"text_tower: its features have dimension {self.text_tower.embed_dim}, the "
                    f"task's {d} (a tower of another backbone?)"
                )

    @property
    def n_classes(self) -> int:
        return len(self.classnames)

    @property
    def dim(self) -> int:
        return int(self.text_weights.shape[1])

    def without_val(self) -> Task:
        """The same task with no validation set (``val-free``)."""
        return Task(
            self.classnames, self.text_weights, self.support, None, dict(self.meta), self.text_tower
        )
