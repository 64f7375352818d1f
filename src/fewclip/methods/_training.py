"""The training machinery the trained methods share (one copy; no method keeps its own).

- :func:`dassl_lr`: the learning rate of an epoch under Dassl's constant warm-up followed by a
  cosine schedule whose count restarts after the warm-up (``WARMUP_RECOUNT=True``, Dassl's
  default), as CLIP-Adapter, TaskRes, ZS-LP and CLAP train.
- :func:`shuffled_epoch`: one epoch of shuffled batches over the support set with one stored
  augmented view per image (Tip-Adapter-F, APE-T: a torch ``DataLoader`` that keeps the last
  batch); :func:`dassl_epoch`: the same, dropping the last incomplete batch as Dassl's training
  loader does (CLIP-Adapter, TaskRes).
- :func:`pooled_epoch`: one epoch drawn from the pooled augmented passes (every stored view of
  every image), as ZS-LP and CLAP's released code trains.
- :func:`cosine_per_step`: the cosine schedule stepped per iteration down to 0 (Tip-Adapter-F,
  APE-T); :func:`warmup_cosine_lr`: a linear warm-up then cosine, per iteration (cross-modal
  probe); :class:`EndlessShuffle`: shuffled passes served in batches of any size;
  :func:`endless_shuffles`: what several of them, sharing one generator, serve over a whole
  schedule, drawn at once.
- :class:`FusedAdam`, :class:`FusedSGD`: ``torch.optim.Adam``'s, ``AdamW``'s and ``SGD``'s
  fused update of one tensor without the optimiser object's per-step bookkeeping (for
  schedules of thousands of small steps).
- :class:`KeepBest`: the validation-selected snapshot (earliest or latest best epoch).
- :class:`SeedEpochs`, :func:`seed_generators`: several seeds trained as one
  batched model (``fewclip.methods.fit_seeds``): each seed's own epoch draws from its own
  generator, their features stacked along a leading seed dimension (S, ...).
- :func:`train_dtype`: the dtype a method trains in; :func:`check_ranges`: declarative
  hyper-parameter checks.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.optim.adam import adam as _adam
from torch.optim.adamw import adamw as _adamw
from torch.optim.sgd import sgd as _sgd

from fewclip.errors import InvalidValueError

__all__ = [
    "DasslSchedule",
    "EndlessShuffle",
    "Epoch",
    "FusedAdam",
    "FusedSGD",
    "KeepBest",
    "PooledEpoch",
    "SeedEpochs",
    "check_ranges",
    "cosine_per_step",
    "dassl_epoch",
    "dassl_lr",
    "endless_shuffles",
    "pooled_epoch",
    "seed_generators",
    "shuffled_epoch",
    "train_dtype",
    "view_rows",
    "warmup_cosine_lr",
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

    def rows(self, bank: Tensor, batch: slice) -> tuple[Tensor, Tensor]:
        """``(images, features)`` of one batch: the image indices and their stored views'
        raw features ``bank[view_of[i], i]`` from a (V, N, D) view bank."""
        idx = self.order[batch]
        return idx, view_rows(bank, self.view_of[idx], idx)

    def gather(self, bank: Tensor) -> Tensor:
        """The features of every position of the epoch at once, in training order:
        ``bank[view_of[order[p]], order[p]]`` for each position p (slice it with ``batches``)."""
        return view_rows(bank, self.view_of[self.order], self.order)


def view_rows(bank: Tensor, views: Tensor, images: Tensor) -> Tensor:
    """``bank[views, images]`` from a (V, N, D) bank: the rows of a contiguous bank copied
    whole (``index_select`` on the flattened bank; element-wise advanced indexing gathers
    several times slower), the same values."""
    if not bank.is_contiguous():
        return bank[views.to(bank.device), images.to(bank.device)]
    flat = views.to(bank.device) * bank.shape[1] + images.to(bank.device)
    return bank.view(-1, bank.shape[2]).index_select(0, flat)


@dataclass(frozen=True)
class SeedEpochs:
    """One epoch of each of several seeds over support sets of one size: ``epochs[s]`` is seed
    ``s``'s :class:`Epoch`, drawn from its own generator, so each seed sees the images, views
    and order its solo run sees. The seeds share the batch slices (same size, same rule)."""

    epochs: list[Epoch]

    @property
    def batches(self) -> list[slice]:
        return self.epochs[0].batches

    @property
    def orders(self) -> Tensor:
        """(S, N): the image at each position of each seed's epoch."""
        return torch.stack([e.order for e in self.epochs])

    def rows(self, banks: list[Tensor], batch: slice) -> tuple[list[Tensor], Tensor]:
        """Each seed's :meth:`Epoch.rows` of one batch: ``(images of each seed, features
        (S, B, D))``."""
        parts = [e.rows(bank, batch) for e, bank in zip(self.epochs, banks, strict=True)]
        return [idx for idx, _ in parts], torch.stack([rows for _, rows in parts])

    def gather(self, banks: list[Tensor]) -> Tensor:
        """(S, N, D): :meth:`Epoch.gather` of each seed's (V, N, D) bank, stacked."""
        return torch.stack([e.gather(bank) for e, bank in zip(self.epochs, banks, strict=True)])


def seed_generators(seeds: list[int]) -> list[torch.Generator]:
    """One CPU generator per seed, each seeded as a solo run seeds its own."""
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def shuffled_epoch(
    n: int, n_views: int, batch_size: int, generator: torch.Generator, *, drop_last: bool = False
) -> Epoch:
    """A seeded epoch over ``n`` support images with ``n_views`` stored views each.

    Draws a permutation, then one view per image, from ``generator`` (in that order); batches
    of ``batch_size`` positions, the last one shorter unless ``drop_last``.
    """
    order = torch.randperm(n, generator=generator)
    view_of = torch.randint(n_views, (n,), generator=generator)
    stop = n - n % batch_size if drop_last else n
    batches = [slice(s, min(s + batch_size, stop)) for s in range(0, stop, batch_size)]
    return Epoch(order, view_of, batches)


def dassl_epoch(n: int, n_views: int, batch_size: int, generator: torch.Generator) -> Epoch:
    """:func:`shuffled_epoch` with Dassl's loader rule: the last incomplete batch is dropped
    whenever there is at least one full batch (``drop_last = n >= batch_size``); with fewer
    images than a batch, the epoch is one batch."""
    return shuffled_epoch(n, n_views, batch_size, generator, drop_last=n >= batch_size)


def cosine_per_step(
    optimizer: torch.optim.Optimizer, *, epochs: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.CosineAnnealingLR:
    """The cosine schedule of Tip-Adapter-F and APE-T: ``CosineAnnealingLR`` over every step of
    training (``T_max = epochs · steps_per_epoch``), stepped after each optimiser step, so the
    rate reaches 0 after the last one."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(1, epochs * steps_per_epoch)
    )


def warmup_cosine_lr(
    step: int, *, lr: float, warmup_steps: int, warmup_lr: float, total: int
) -> float:
    """Learning rate of 0-based ``step`` under a linear warm-up then a cosine (the cross-modal
    probe's released schedule)::

        step = 0:          warmup_lr
        0 < step < W:      lr · step / W
        step ≥ W:          lr · ½ (1 + cos(π (step − W) / total))
    """
    if step < warmup_steps:
        return warmup_lr if step == 0 else lr * step / warmup_steps
    return 0.5 * lr * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, total)))


class EndlessShuffle:
    """Endless shuffled passes over ``n`` items served in batches of any size, a new
    permutation drawn from ``generator`` whenever a pass runs out (a shuffling ``DataLoader``
    iterated forever, with batches that may straddle two passes)."""

    def __init__(self, n: int, generator: torch.Generator):
        self.n, self.generator = n, generator
        self.order = torch.randperm(n, generator=generator)
        self.pos = 0

    def take(self, k: int) -> Tensor:
        """The next ``k`` item indices."""
        parts, need = [], k
        while need > 0:
            if self.pos >= self.n:
                self.order, self.pos = torch.randperm(self.n, generator=self.generator), 0
            part = self.order[self.pos : self.pos + need]
            self.pos += len(part)
            need -= len(part)
            parts.append(part)
        return torch.cat(parts) if len(parts) > 1 else parts[0]


def endless_shuffles(
    sizes: tuple[int, ...], takes: tuple[int, ...], steps: int, generator: torch.Generator
) -> list[Tensor]:
    """The items a training loop's :class:`EndlessShuffle` streams serve over ``steps`` steps,
    computed at once: ``out[i][t]`` (``takes[i]`` indices) is what stream ``i`` serves at step
    ``t``.

    Replays, with the same ``generator`` draws in the same order, a loop that first builds one
    stream per entry of ``sizes`` (in that order; each draws its first permutation), then at
    every step takes ``takes[i]`` items from each stream ``i`` in turn (none when
    ``takes[i]`` is 0). A stream needs its ``j``-th new permutation at the first step whose
    take runs past ``j·n`` items, step ``⌊j·n / k⌋``; within a step the streams draw in order.
    """
    starts = [(-1, i, 0) for i in range(len(sizes))]  # (step, stream, pass) of each draw
    for i, (n, k) in enumerate(zip(sizes, takes, strict=True)):
        if n < 1:
            raise InvalidValueError(f"sizes: expected positive stream sizes, found {sizes}")
        total = k * steps
        starts += [(j * n // k, i, j) for j in range(1, -(-total // n))] if k else []
    passes: list[list[Tensor]] = [[] for _ in sizes]
    for _, i, _ in sorted(starts):
        passes[i].append(torch.randperm(sizes[i], generator=generator))
    out = []
    for i, k in enumerate(takes):
        served = torch.cat(passes[i])[: k * steps]
        out.append(served.view(steps, k))
    return out


class FusedAdam:
    """The update ``torch.optim.Adam([param], fused=True)`` (``decoupled=False``, weight decay
    added to the gradient) or ``torch.optim.AdamW([param], fused=True)`` (``decoupled=True``)
    makes, for one parameter tensor.

    ``step(grad, lr)`` advances the step count and runs the same fused kernel with the same
    state (first and second moments at zero, a float32 step count), through torch's functional
    ``torch.optim.adam.adam`` / ``torch.optim.adamw.adamw``, so ``param`` follows the
    optimiser's trajectory bit for bit; what it leaves out is the optimiser object's per-step
    work (hooks, parameter groups, state look-ups): 40 to 100 µs a step on a CPU, as much as
    the update of a 100 × 1024 head.
    """

    def __init__(
        self,
        param: Tensor,
        *,
        decoupled: bool,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        self.param, self.decoupled = param, decoupled
        self.betas, self.eps, self.weight_decay = betas, eps, weight_decay
        self.exp_avg = torch.zeros_like(param, memory_format=torch.preserve_format)
        self.exp_avg_sq = torch.zeros_like(param, memory_format=torch.preserve_format)
        self.count = torch.zeros((), dtype=torch.float32, device=param.device)

    def step(self, grad: Tensor, lr: float) -> None:
        """One update of ``param`` with gradient ``grad`` at learning rate ``lr``."""
        update = _adamw if self.decoupled else _adam
        update(
            [self.param],
            [grad],
            [self.exp_avg],
            [self.exp_avg_sq],
            [],
            [self.count],
            fused=True,
            amsgrad=False,
            beta1=self.betas[0],
            beta2=self.betas[1],
            lr=lr,
            weight_decay=self.weight_decay,
            eps=self.eps,
            maximize=False,
        )


class FusedSGD:
    """The update ``torch.optim.SGD([param], momentum=..., weight_decay=..., fused=True)``
    makes, for one parameter tensor (no dampening, no Nesterov).

    ``step(grad, lr)`` runs torch's fused kernel through the functional ``torch.optim.sgd.sgd``
    with the same momentum buffer (created on the first step, as the optimiser does): one pass
    over the parameter, its gradient and its buffer, where the unfused update makes four
    (weight decay, momentum decay, momentum, parameter), without the optimiser object's
    per-step work. Elementwise, so a flat ``param`` holding several weights updates each of
    them as it would alone.
    """

    def __init__(self, param: Tensor, *, momentum: float, weight_decay: float):
        self.param = param
        self.momentum, self.weight_decay = momentum, weight_decay
        self.buffers: list[Tensor | None] = [None]

    def step(self, grad: Tensor, lr: float) -> None:
        """One update of ``param`` with gradient ``grad`` at learning rate ``lr``."""
        _sgd(
            [self.param],
            [grad],
            self.buffers,
            fused=True,
            weight_decay=self.weight_decay,
            momentum=self.momentum,
            lr=lr,
            dampening=0.0,
            nesterov=False,
            maximize=False,
        )


class KeepBest:
    """The training state of the epoch with the best validation score.

    ``offer(score, epoch, *tensors)`` keeps copies of ``tensors`` when ``score`` beats the
    best so far: strictly (``ties="first"``, the earliest best epoch: Tip-Adapter-F, APE-T,
    the cross-modal probe) or not (``ties="last"``, the latest: LP++); ``keep`` records the
    state whatever its score (training without validation keeps the last epoch). Nothing yet:
    ``score`` is −inf, ``epoch`` 0 and ``state`` empty.
    """

    def __init__(self, *, ties: str = "first"):
        if ties not in ("first", "last"):
            raise InvalidValueError(f"ties: expected 'first' or 'last', found {ties!r}")
        self.ties = ties
        self.score = -math.inf
        self.epoch = 0
        self.state: tuple[Tensor, ...] = ()
        #: Every ``(epoch, score)`` offered, in order (what the selection was made from).
        self.history: list[tuple[int, float]] = []

    def offer(self, score: float, epoch: int, *tensors: Tensor) -> bool:
        """Record ``tensors`` (detached copies) if ``score`` is the best; returns whether it was."""
        self.history.append((epoch, score))
        better = score > self.score or (self.ties == "last" and score == self.score)
        if better:
            self.score, self.epoch = score, epoch
            self.state = tuple(t.detach().clone() for t in tensors)
        return better

    def keep(self, epoch: int, *tensors: Tensor) -> None:
        """Record ``tensors`` whatever the score (no validation set: the last epoch is kept)."""
        self.epoch = epoch
        self.state = tuple(t.detach().clone() for t in tensors)


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


def _rate(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and 0 <= float(v) < math.inf


_RULES = {
    "int>=0": (lambda v: _integer(v) and v >= 0, "a non-negative integer"),
    "int>=1": (lambda v: _integer(v) and v >= 1, "a positive integer"),
    "lr": (_rate, "a non-negative learning rate"),
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
