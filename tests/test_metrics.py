"""Metrics against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, top_k_accuracy_score

from fewclip.metrics import classification_report, per_class_accuracy, topk_accuracy


@pytest.mark.parametrize("seed", range(5))
def test_against_sklearn(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(200, 7, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 7, (200,), generator=g)
    labels[labels == 3] = 4  # class 3 has no example
    y, s = labels.numpy(), logits.numpy()
    assert topk_accuracy(logits, labels, 1) == pytest.approx((s.argmax(1) == y).mean())
    assert topk_accuracy(logits, labels, 5) == pytest.approx(
        top_k_accuracy_score(y, s, k=5, labels=np.arange(7))
    )
    rep = classification_report(logits, labels, [f"c{i}" for i in range(7)], k=5)
    assert rep["macro"] == pytest.approx(balanced_accuracy_score(y, s.argmax(1)))
    assert rep["per_class"][3] == {"class": "c3", "n": 0, "accuracy": None}
    per = per_class_accuracy(logits, labels)
    for c in (0, 1, 2, 4, 5, 6):
        mask = y == c
        assert per[c] == pytest.approx((s.argmax(1)[mask] == c).mean())
        assert rep["per_class"][c]["n"] == int(mask.sum())


def test_hand_checked_case_and_errors() -> None:
    logits = torch.tensor([[3.0, 2.0, 1.0], [0.0, 1.0, 2.0], [1.0, 3.0, 2.0], [2.0, 1.0, 0.0]])
    labels = torch.tensor([0, 1, 2, 0])
    assert topk_accuracy(logits, labels, 1) == 0.25 + 0.25  # rows 0 and 3
    assert topk_accuracy(logits, labels, 2) == 1.0
    assert per_class_accuracy(logits, labels) == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="labels: expected class ids"):
        topk_accuracy(logits, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"logits: expected shape \(N, C\)"):
        topk_accuracy(logits[0], labels)
    with pytest.raises(ValueError, match="classnames: expected 3 names"):
        classification_report(logits, labels, ["a"])
