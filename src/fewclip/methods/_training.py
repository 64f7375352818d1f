"""The training machinery the trained methods share (one copy; no method keeps its own).

- :func:`dassl_lr`: the learning rate of an epoch under Dassl's constant warm-up followed by a
  cosine schedule whose count restarts after the warm-up (``WARMUP_RECOUNT=True``, Dassl's
  default), as CLIP-Adapter, TaskRes, ZS-LP and CLAP train.
- :func:`dassl_epoch`: one epoch of Dassl-style batches over the support set with one stored
  augmented view per image, dropping the last incomplete batch as Dassl's training loader does.
- :func:`pooled_epoch`: one epoch drawn from the pooled augmented passes (every stored view of
  every image), as ZS-LP and CLAP's released code trains.
- :func:`train_dtype`: the dtype a method trains in.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
from torch import Tensor

from fewclip.errors import InvalidValueError

__all__ = [
    "DasslSchedule",
    "Epoch",
    "PooledEpoch",
    "check_ranges",
    "dassl_epoch",
    "dassl_lr",
    "pooled_epoch",
    "train_dtype",
]


def train_dtype(dtype: torch.dtype) -> torch.dtype:
    """Training runs in float32 for float16 methods (CPU half precision is slow and coarse)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def dassl_lr(epoch: int, *, lr: float, epochs: int, warmup_epochs: int, warmup_lr: float) -> float:
    """Learning rate of 0-based ``epoch`` (W = ``warmup_epochs``, T = ``epochs``)::

        e < W:   warmup_lr
        e ≥ W:   lr · ½ (1 + cos(π (e − W) / T))

    Dassl wraps ``CosineAnnealingLR(T_max=T)`` in a ``ConstantWarmupScheduler``; with
    ``WARMUP_RECOUNT=True`` the cosine is first stepped when the warm-up ends, so the first
    epoch after it runs at the full rate and the last epoch does not reach the cosine's end.
    """
    if epoch < warmup_epochs:
        return warmup_lr
    return 0.5 * lr * (1 + math.cos(math.pi * (epoch - warmup_epochs) / epochs))


@dataclass(frozen=True)
class Epoch:
    """One epoch of batches: image ``order[p]`` comes at position ``p``, with its stored
    augmented view ``view_of[order[p]]``; ``batches`` are slices of positions."""

    order: Tensor
    view_of: Tensor
    batches: list[slice]


def dassl_epoch(n: int, n_views: int, batch_size: int, generator: torch.Generator) -> Epoch:
    """A seeded epoch over ``n`` support images with ``n_views`` stored views each.

    Draws a permutation, then one view per image, from ``generator`` (in that order). Dassl's
    training loader drops the last incomplete batch whenever there is at least one full batch
    (``drop_last = n >= batch_size``); with fewer images than a batch, the epoch is one batch.
    """
    order = torch.randperm(n, generator=generator)
    view_of = torch.randint(n_views, (n,), generator=generator)
    stop = n - n % batch_size if n >= batch_size else n
    batches = [slice(s, min(s + batch_size, stop)) for s in range(0, stop, batch_size)]
    return Epoch(order, view_of, batches)


@dataclass(frozen=True)
class PooledEpoch:
    """One epoch over the pooled (view, image) rows: ``rows`` holds flat indices
    ``view·n + image`` in training order, ``batches`` slices of it."""

    rows: Tensor
    batches: list[slice]


def pooled_epoch(n: int, n_views: int, batch_size: int, generator: torch.Generator) -> PooledEpoch:
    """A seeded epoch drawn without replacement from all ``n_views·n`` stored (view, image) rows.

    The number of batches is that of Dassl's loader over the ``n`` images
    (``n // batch_size``, or one batch below ``batch_size`` images); each batch takes the next
    ``batch_size`` rows of a permutation of the pool. With fewer images than a batch, the
    epoch is one batch of ``min(batch_size, n_views·n)`` rows, so the same image may come in
    several views in one batch, as in the released CLAP code (20 augmented passes, 256 rows).
    """
    pool = n_views * n
    n_batches = n // batch_size if n >= batch_size else 1
    take = min(n_batches * batch_size, pool)
    rows = torch.randperm(pool, generator=generator)[:take]
    batches = [slice(s, min(s + batch_size, take)) for s in range(0, take, batch_size)]
    return PooledEpoch(rows, batches)


class DasslSchedule:
    """Mixin for methods trained with Dassl's schedule: ``_lr_at(epoch)`` from the method's
    ``lr``, ``epochs``, ``warmup_epochs`` and ``warmup_lr`` (:func:`dassl_lr`)."""

    lr: float
    epochs: int
    warmup_epochs: int
    warmup_lr: float

    def _lr_at(self, epoch: int) -> float:
        return dassl_lr(
            epoch,
            lr=self.lr,
            epochs=self.epochs,
            warmup_epochs=self.warmup_epochs,
            warmup_lr=self.warmup_lr,
        )


#: Declarative hyper-parameter rules for :func:`check_ranges`: (test, what is expected).
def _integer(v: object) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


_RULES = {
    "int>=0": (lambda v: _integer(v) and v >= 0, "a non-negative integer"),
    "int>=1": (lambda v: _integer(v) and v >= 1, "a positive integer"),
}


def check_ranges(method: object, **rules: str) -> None:
    """Check hyper-parameters of ``method`` against named rules (``epochs="int>=0"``,
    ``batch_size="int>=1"``); the first one that fails raises ``InvalidValueError`` as
    ``"<name>: expected <what>, found <value>"``."""
    for name, rule in rules.items():
        test, what = _RULES[rule]
        value = getattr(method, name)
        if not test(value):
            raise InvalidValueError(f"{name}: expected {what}, found {value!r}")
