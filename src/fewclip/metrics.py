"""Classification metrics on logits: top-k accuracy, per-class accuracy and their macro mean.

All figures are fractions in [0, 1]. ``macro`` is the unweighted mean of the per-class
accuracies over the classes that have at least one example (scikit-learn's
``balanced_accuracy_score``); classes without examples are reported as ``None``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from fewclip.errors import InvalidValueError

__all__ = ["classification_report", "per_class_accuracy", "topk_accuracy"]


def _check(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    if logits.ndim != 2:
        raise InvalidValueError(f"logits: expected shape (N, C), found {tuple(logits.shape)}")
    y = torch.as_tensor(labels).to(logits.device).long()
    if y.shape != (logits.shape[0],):
        raise InvalidValueError(
            f"labels: expected shape ({logits.shape[0]},), found {tuple(y.shape)}"
        )
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= logits.shape[1]):
        raise InvalidValueError(
            f"labels: expected class ids in [0, {logits.shape[1]}), found "
            f"[{int(y.min())}, {int(y.max())}]"
        )
    return logits, y


def topk_accuracy(logits: Tensor, labels: Tensor, k: int = 1) -> float:
    """Fraction of rows whose label is among the ``k`` highest logits (ties: ``torch.topk``)."""
    logits, y = _check(logits, labels)
    if y.numel() == 0:
        return float("nan")
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return float((top == y[:, None]).any(dim=1).float().mean())


def per_class_accuracy(logits: Tensor, labels: Tensor) -> list[float | None]:
    """Top-1 accuracy of each class (``None`` for classes with no example)."""
    logits, y = _check(logits, labels)
    c = logits.shape[1]
    correct = (logits.argmax(dim=1) == y).double()
    hits = torch.zeros(c, dtype=torch.float64, device=y.device).index_add_(0, y, correct)
    counts = torch.bincount(y, minlength=c).double()
    pairs = zip(hits.tolist(), counts.tolist(), strict=True)
    return [None if n == 0 else float(h / n) for h, n in pairs]


def classification_report(
    logits: Tensor, labels: Tensor, classnames: Sequence[str] | None = None, *, k: int = 5
) -> dict[str, Any]:
    """``{"n", "top1", "top<k>", "macro", "per_class": [{"class", "n", "accuracy"}, ...]}``.

    ``per_class`` is a list in class order (class names may repeat, as in ImageNet).
    """
    per = per_class_accuracy(logits, labels)
    names = list(classnames) if classnames is not None else [str(i) for i in range(len(per))]
    if len(names) != len(per):
        raise InvalidValueError(f"classnames: expected {len(per)} names, found {len(names)}")
    present = [a for a in per if a is not None]
    counts = torch.bincount(torch.as_tensor(labels).long(), minlength=len(per)).tolist()
    return {
        "n": int(logits.shape[0]),
        "top1": topk_accuracy(logits, labels, 1),
        f"top{k}": topk_accuracy(logits, labels, k),
        "macro": sum(present) / len(present) if present else float("nan"),
        "per_class": [
            {"class": name, "n": int(n), "accuracy": acc}
            for name, n, acc in zip(names, counts, per, strict=True)
        ],
    }
