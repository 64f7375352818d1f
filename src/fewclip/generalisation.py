"""Generalisation protocols: train on some classes or one domain, test on others.

The three protocols of the prompt-learning papers (CoOp, CoCoOp and their successors), as the
benchmark runner applies them (``fewclip bench --protocol ...``):

=========================== ================================================================
``base-to-new``             a dataset's classes split in two halves (:func:`base_new_split`):
                            fit on K shots of the **base** half, test on the base test images
                            with the base classes only, and on the **new** test images with the
                            new classes only; report base, new and their harmonic mean H
                            (:func:`harmonic_mean`). CoCoOp's Table 1.
``cross-dataset``           fit on a source dataset (ImageNet, 16 shots), test on other
                            datasets with their own class names. CoCoOp's Table 2.
``domain-generalisation``   fit on ImageNet, test on ImageNet-V2, -Sketch, -A and -R: the same
                            classes in other domains; -A and -R keep 200 of the 1000 classes,
                            scored with those columns of the ImageNet classifier
                            (:func:`check_class_mapping`). CoOp's Table on domain shift.
=========================== ================================================================

A method scores classes it was not fitted on through ``Method.for_classes`` (the new classes'
text weights, and the text tower for prompt learners); one that cannot (``new_class_refusal``:
caches, linear heads, per-class residuals) is reported on the classes it was fitted on only,
with its reason.

The leak rules are the validation protocols' (``fewclip.protocol``): hyper-parameters and
epochs are chosen on the few-shot validation split of the training classes (``fewshot-val`` by
default), never on test images, and under base-to-new never on a new class: the support and
validation rows of the base half are those of the standard few-shot draw of the whole dataset
(so a base-to-new run and a standard run share their draw, as the reference's split files do),
the method sees only base class names and text weights while fitting, and new-class rows are
read by the evaluation alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from fewclip.errors import InvalidValueError, NotFoundError
from fewclip.protocol import FeatureSource, SplitPlan, SplitRef
from fewclip.task import FeatureSet

__all__ = [
    "BASE_TO_NEW",
    "CROSS_DATASET",
    "CROSS_DATASET_TARGETS",
    "DOMAIN_GENERALISATION",
    "DOMAIN_TARGETS",
    "GENERALISATION_PROTOCOLS",
    "TRANSFER_PROTOCOLS",
    "VALIDATION_PROTOCOLS",
    "ClassSubsetSource",
    "average",
    "base_new_split",
    "check_class_mapping",
    "harmonic_mean",
    "subset_plan",
]

BASE_TO_NEW = "base-to-new"
CROSS_DATASET = "cross-dataset"
DOMAIN_GENERALISATION = "domain-generalisation"
#: The generalisation protocols, in the order of the papers.
GENERALISATION_PROTOCOLS: tuple[str, ...] = (BASE_TO_NEW, CROSS_DATASET, DOMAIN_GENERALISATION)
#: The protocols that fit on a source dataset and test on target datasets.
TRANSFER_PROTOCOLS: tuple[str, ...] = (CROSS_DATASET, DOMAIN_GENERALISATION)
#: Validation protocols a generalisation protocol may select on (never ``oracle-test``).
VALIDATION_PROTOCOLS: tuple[str, ...] = ("fewshot-val", "coop-val", "full-val", "val-free")

#: CoCoOp's cross-dataset targets (Table 2): the ten datasets besides ImageNet.
CROSS_DATASET_TARGETS: tuple[str, ...] = (
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
)
#: The domain-generalisation targets of CoOp and CoCoOp: ImageNet's four variants.
DOMAIN_TARGETS: tuple[str, ...] = ("imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r")


def _labels_list(labels: Any) -> list[int]:
    if hasattr(labels, "tolist"):
        return [int(v) for v in labels.tolist()]
    return [int(v) for v in labels]


def base_new_split(train_labels: Any) -> tuple[list[int], list[int]]:
    """The base and new classes of a dataset, as CoCoOp splits them.

    The class ids present in ``train_labels`` are sorted; with n of them and
    ``m = ceil(n / 2)``, the first m are the base classes and the other ``n − m`` the new ones
    (an odd n gives base the extra class: 37 → 19 + 18). Reference: ``subsample_classes`` in
    CoOp's ``datasets/oxford_pets.py``, which every dataset's reader calls.

    Within each half, class ``base[i]`` (``new[i]``) becomes class ``i``: the reference
    relabels the selected classes ``0 … k − 1`` in this order (:class:`ClassSubsetSource`).
    """
    present = sorted(set(_labels_list(train_labels)))
    if len(present) < 2:
        raise InvalidValueError(
            f"base-to-new needs at least 2 classes with training images, found {len(present)}"
        )
    m = math.ceil(len(present) / 2)
    return present[:m], present[m:]


def harmonic_mean(base: float | None, new: float | None) -> float | None:
    """``H = 2·base·new / (base + new)`` (CoCoOp), in the unit of its inputs; ``None`` when
    either is missing, ``0`` when both are ``0``."""
    if base is None or new is None:
        return None
    if base < 0 or new < 0 or not (math.isfinite(base) and math.isfinite(new)):
        raise InvalidValueError(
            f"harmonic_mean: expected non-negative finite accuracies, found {base} and {new}"
        )
    return 0.0 if base + new == 0 else 2.0 * base * new / (base + new)


class ClassSubsetSource:
    """A ``FeatureSource`` holding only the rows of some classes of another, relabelled.

    Row ``j`` of a split here is the ``j``-th row (in order) of ``source``'s split whose label
    is in ``classes``; its label is that label's position in ``classes`` (so ``classes[i]``
    becomes class ``i``, the reference's relabelling). Features are read from ``source`` only
    for the rows asked for: a view of the base half never reads a new-class row.

    Attributes:
        classes: the parent's class ids kept, in their new order.
    """

    def __init__(self, source: FeatureSource, classes: Sequence[int]) -> None:
        self._source = source
        self.classes = [int(c) for c in classes]
        if not self.classes:
            raise InvalidValueError("classes: expected at least one class id, found none")
        if len(set(self.classes)) != len(self.classes):
            raise InvalidValueError(f"classes: duplicate class ids in {self.classes}")
        self._position = {c: i for i, c in enumerate(self.classes)}
        self._rows: dict[str, tuple[Tensor, Tensor]] = {}

    def splits(self) -> list[str]:
        splits = getattr(self._source, "splits", None)
        if callable(splits):
            return list(splits())
        return [s for s in ("train", "val", "test") if self._has(s)]

    def _has(self, split: str) -> bool:
        try:
            self._source.labels(split)
        except (KeyError, ValueError, FileNotFoundError, NotFoundError):
            return False
        return True

    def _split(self, split: str) -> tuple[Tensor, Tensor]:
        """(parent row ids, new labels) of ``split``'s kept rows, computed once."""
        if split not in self._rows:
            labels = _labels_list(self._source.labels(split))
            keep = [i for i, y in enumerate(labels) if y in self._position]
            self._rows[split] = (
                torch.as_tensor(keep, dtype=torch.long),
                torch.as_tensor([self._position[labels[i]] for i in keep], dtype=torch.long),
            )
        return self._rows[split]

    def parent_rows(self, split: str) -> Tensor:
        """The parent's row ids of this split's rows, in order."""
        return self._split(split)[0]

    def labels(self, split: str) -> Tensor:
        return self._split(split)[1]

    def features(
        self, split: str, index: Sequence[int] | None = None, *, views: bool = False
    ) -> FeatureSet:
        rows, labels = self._split(split)
        if index is None:
            pick, new_labels = rows, labels
        else:
            idx = torch.as_tensor(list(index), dtype=torch.long)
            if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= len(rows)):
                raise InvalidValueError(
                    f"split {split!r}: indices must lie in [0, {len(rows)}), found "
                    f"[{int(idx.min())}, {int(idx.max())}]"
                )
            pick, new_labels = rows[idx], labels[idx]
        fs = self._source.features(split, pick.tolist(), views=views)
        return FeatureSet(fs.features, new_labels, fs.views)

    def to_parent(self, split: str, index: Sequence[int]) -> list[int]:
        """Parent row ids of rows ``index`` of ``split`` here."""
        rows = self.parent_rows(split)
        return [int(rows[i]) for i in index]

    def from_parent(self, split: str, parent_index: Sequence[int]) -> list[int]:
        """Rows here of the parent rows ``parent_index`` that belong to the kept classes, in
        the given order; the others are dropped."""
        position = {int(r): j for j, r in enumerate(self.parent_rows(split).tolist())}
        return [position[int(r)] for r in parent_index if int(r) in position]


def subset_plan(plan: SplitPlan, source: ClassSubsetSource) -> SplitPlan:
    """``plan`` (drawn on the whole dataset) restricted to the classes of ``source``: the
    support and validation rows of those classes, as rows of ``source``. A validation set that
    is a whole split stays whole (``source``'s split holds only its classes). The meta records
    the classes kept."""

    def restrict(ref: SplitRef | None) -> SplitRef | None:
        if ref is None or ref.indices is None:
            return ref
        return SplitRef(ref.split, tuple(source.from_parent(ref.split, ref.indices)))

    support = restrict(plan.support)
    assert support is not None
    meta = dict(plan.meta)
    meta["classes"] = list(source.classes)
    return SplitPlan(
        plan.protocol, plan.shots, plan.seed, support, restrict(plan.val), plan.leaky, meta
    )


def check_class_mapping(
    source_names: Sequence[str],
    target_names: Sequence[str],
    class_index: Sequence[int] | None,
    *,
    target: str = "target",
) -> None:
    """Check that a domain-generalisation target's classes are the source's: class ``i`` of
    the target is class ``class_index[i]`` of the source (all of them, in order, when
    ``class_index`` is ``None``), with the same name. ImageNet-A and -R map their 200 classes
    to ImageNet ids this way (the reference builds their 200-way head from the same names).
    """
    names, tnames = list(source_names), list(target_names)
    if class_index is None:
        if len(tnames) != len(names):
            raise InvalidValueError(
                f"{target}: {len(tnames)} classes and no class_index, but the source has "
                f"{len(names)}; a domain-generalisation target must have the source's classes "
                "(or map its classes to the source's with class_index, as ImageNet-A/-R do)"
            )
        index: list[int] = list(range(len(names)))
    else:
        index = [int(i) for i in class_index]
        if len(index) != len(tnames):
            raise InvalidValueError(
                f"{target}: class_index has {len(index)} entries for {len(tnames)} classes"
            )
        bad = [i for i in index if not 0 <= i < len(names)]
        if bad:
            raise InvalidValueError(
                f"{target}: class_index {bad[:5]} lies outside the source's {len(names)} classes"
            )
    wrong = [(i, t, names[j]) for i, (t, j) in enumerate(zip(tnames, index, strict=True))]
    wrong = [w for w in wrong if w[1] != w[2]]
    if wrong:
        shown = "; ".join(f"class {i} {t!r} vs source {s!r}" for i, t, s in wrong[:3])
        raise InvalidValueError(
            f"{target}: {len(wrong)} class name(s) differ from the source classes they map to "
            f"({shown}); a domain-generalisation target must name the source's classes"
        )


def average(values: Mapping[str, float | None]) -> float | None:
    """The mean of ``values``, or ``None`` when any is missing (or there are none)."""
    vs = list(values.values())
    if not vs or any(v is None for v in vs):
        return None
    return sum(v for v in vs if v is not None) / len(vs)
