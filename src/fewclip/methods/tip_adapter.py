"""Tip-Adapter and Tip-Adapter-F (Zhang et al., ECCV 2022).

Training-free Tip-Adapter builds a key-value cache from the few-shot images:
``keys = cache_keys(views)`` (mean of raw augmented views, L2-normalised), values = one-hot
labels, and classifies with

    logits = scale·x·Wᵀ + α·exp(−β(1 − x·keysᵀ))·onehot(labels)

Tip-Adapter-F fine-tunes the keys (values and text weights frozen) with β, α fixed at their
initial values, picks the best epoch on validation, then searches (β, α) again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor
from tqdm.auto import tqdm

from fewclip.errors import InvalidValueError
from fewclip.functional import (
    affinity_from_similarity_,
    cache_keys,
    class_sum,
    count_correct,
    l2_normalize,
    reference_grid,
    search_tip,
    tip_cache_logits,
    tip_logits,
)
from fewclip.methods._training import (
    KeepBest,
    SeedEpochs,
    check_ranges,
    cosine_per_step,
    seed_generators,
    shuffled_epoch,
)
from fewclip.methods.base import Method, register
from fewclip.task import FeatureSet, Task

__all__ = ["TipAdapter", "TipAdapterF", "prototype_keys"]


def prototype_keys(
    keys: Tensor, labels: Tensor, n_classes: int, prototypes: int, *, seed: int
) -> tuple[Tensor, Tensor]:
    """A smaller cache of at most ``prototypes`` entries per class (Tip-Adapter's cache ablation).

    The shots of each class are shuffled (seeded) and split into ``min(prototypes, shots)``
    groups of near-equal size; each prototype is the L2-normalised mean of its group's keys.
    Returns ``(keys (K', D), labels (K',))`` sorted by class.
    """
    if prototypes < 1:
        raise InvalidValueError(f"prototypes: expected a positive integer, found {prototypes}")
    g = torch.Generator().manual_seed(seed)
    out_keys, out_labels = [], []
    for c in range(n_classes):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g).to(idx.device)]
        groups = torch.tensor_split(idx, min(prototypes, len(idx)))
        out_keys.append(torch.stack([keys[grp].mean(dim=0) for grp in groups]))
        out_labels.append(torch.full((len(groups),), c, dtype=torch.long, device=labels.device))
    return l2_normalize(torch.cat(out_keys)), torch.cat(out_labels)


@register("tip-adapter")
class TipAdapter(Method):
    """Training-free Tip-Adapter.

    ``logits = scale·x·Wᵀ + α·exp(−β(1 − x·keysᵀ))·onehot(labels)``.

    Args:
        alpha: residual ratio α (weight of the cache logits against the ×100 text logits); used
            as is when no search runs.
        beta: sharpness β of the affinity kernel; used as is when no search runs.
        search: search (β, α) on ``task.val`` with the reference grid when the task has a
            validation set (``functional.search_tip``); without one, ``alpha``/``beta`` are used.
        search_scale: upper ends (S_β, S_α) of the grid (reference configs, e.g. ImageNet (7, 3)).
        search_step: grid sizes (n_β, n_α), (200, 20) in every reference config.
        scale: text logit scale, the reference's constant 100.
        prototypes: keep at most this many cache entries per class (means of random groups of
            shots); ``None`` keeps one key per image as the reference does.
        seed: seed of the prototype grouping.
        dtype, device: compute precision and device.

    Attributes:
        text_weights_ (C, D) tensor: the L2-normalised text classifier T.
        keys_ (K, D) tensor: the cache keys (one per image, the L2-normalised mean of its
            stored views, or one per prototype), sorted by class.
        key_labels_ (K,) int64 tensor: the class of each key.
        alpha_, beta_ (float): the α and β in use (searched on validation, else given).
        val_accuracy_ (float or None): validation accuracy in % at (β, α); None without a search.
    """

    training_free = True
    uses_validation = True
    new_class_refusal = "its cache's one-hot labels name the training classes only"
    chooses_on_validation = frozenset({"search"})
    quick_params: ClassVar[Mapping[str, Any]] = {"search_step": (10, 5)}

    _state_tensors = ("keys_", "key_labels_", "text_weights_")
    _state_values: ClassVar[tuple[str, ...]] = ("alpha_", "beta_", "val_accuracy_")

    def __init__(
        self,
        *,
        alpha: float = 1.0,
        beta: float = 1.0,
        search: bool = True,
        search_scale: Sequence[float] = (7.0, 3.0),
        search_step: Sequence[int] = (200, 20),
        scale: float = 100.0,
        prototypes: int | None = None,
        seed: int = 1,
        dtype: str = "float32",
        device: str = "cpu",
    ):
        self.alpha = alpha
        self.beta = beta
        self.search = search
        self.search_scale = search_scale
        self.search_step = search_step
        self.scale = scale
        self.prototypes = prototypes
        self.seed = seed
        self.dtype = dtype
        self.device = device

    # -- fitting ----------------------------------------------------------------------------
    def _build_cache(self, task: Task) -> None:
        self.text_weights_ = l2_normalize(self._to(task.text_weights))
        keys = cache_keys(self._to(task.support.view_bank()))
        labels = task.support.labels.to(self._device)
        if self.prototypes is not None:
            keys, labels = prototype_keys(
                keys, labels, task.n_classes, self.prototypes, seed=self.seed
            )
        # Sorting by class changes no logit (the cache term is a sum over keys) and lets the
        # class-wise sum run as a reshape when every class has the same number of keys.
        order = torch.argsort(labels, stable=True)
        self.keys_, self.key_labels_ = keys[order], labels[order]
        self.alpha_, self.beta_ = float(self.alpha), float(self.beta)
        self.val_accuracy_: float | None = None

    def _search(self, val: FeatureSet | None) -> None:
        if not self.search or val is None:
            return
        x = l2_normalize(self._to(val.features))
        self.beta_, self.alpha_, self.val_accuracy_ = search_tip(
            x,
            val.labels.to(self._device),
            self.keys_,
            self.key_labels_,
            self.text_weights_,
            search_scale=tuple(self.search_scale),
            search_step=tuple(self.search_step),
            scale=self.scale,
        )

    def _fit(self, task: Task) -> None:
        self._build_cache(task)
        self._search(task.val)

    def _selection(self) -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
        if not self.search or self.val_accuracy_ is None:
            return None
        betas = reference_grid(float(self.search_scale[0]), int(self.search_step[0]))
        alphas = reference_grid(float(self.search_scale[1]), int(self.search_step[1]))
        grid = [{"search": False, "beta": b, "alpha": a} for b in betas for a in alphas]
        return grid, {"search": False, "beta": self.beta_, "alpha": self.alpha_}

    def _logits(self, x: Tensor) -> Tensor:
        return tip_logits(
            x,
            self.keys_,
            self.key_labels_,
            self.text_weights_,
            alpha=self.alpha_,
            beta=self.beta_,
            scale=self.scale,
        )


@register("tip-adapter-f")
class TipAdapterF(TipAdapter):
    """Tip-Adapter-F: Tip-Adapter with the cache keys fine-tuned.

    Keys are initialised from the cache and trained with cross-entropy on the Tip logits with
    β, α fixed at ``beta``/``alpha``; values and text weights stay frozen and the keys are not
    re-normalised. AdamW (lr 1e-3, eps 1e-4, weight decay 0.01), cosine schedule stepped per
    iteration down to 0, batch 256 shuffled, 20 epochs (EuroSAT 100 in the reference). Each
    step draws one stored augmented view per image instead of re-running the image encoder.
    After each epoch the keys are scored on ``task.val`` (never on test) and the best epoch is
    kept (strict ``>``, so the earliest best); without a validation set the last epoch is kept.
    Then (β, α) are searched again with the learned keys.

    Args (beyond ``TipAdapter``'s):
        epochs, lr, eps, weight_decay, batch_size: training settings (reference defaults).
        progress: show a progress bar over epochs.

    Attributes: as ``TipAdapter``'s (``keys_`` are the fine-tuned keys of the best epoch), plus:
        best_epoch_ (int): the kept epoch (1-based; the last without validation, 0 untrained).
    """

    training_free = False
    uses_validation = True
    batches_seeds = True
    chooses_on_validation = frozenset({"epoch"})
    quick_params: ClassVar[Mapping[str, Any]] = {"epochs": 2, "search_step": (10, 5)}

    _state_values: ClassVar[tuple[str, ...]] = ("alpha_", "beta_", "val_accuracy_", "best_epoch_")

    def __init__(
        self,
        *,
        alpha: float = 1.0,
        beta: float = 1.0,
        search: bool = True,
        search_scale: Sequence[float] = (7.0, 3.0),
        search_step: Sequence[int] = (200, 20),
        scale: float = 100.0,
        prototypes: int | None = None,
        epochs: int = 20,
        lr: float = 1e-3,
        eps: float = 1e-4,
        weight_decay: float = 0.01,
        batch_size: int = 256,
        seed: int = 1,
        dtype: str = "float32",
        device: str = "cpu",
        progress: bool = False,
    ):
        super().__init__(
            alpha=alpha,
            beta=beta,
            search=search,
            search_scale=search_scale,
            search_step=search_step,
            scale=scale,
            prototypes=prototypes,
            seed=seed,
            dtype=dtype,
            device=device,
        )
        self.epochs = epochs
        self.lr = lr
        self.eps = eps
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.progress = progress

    def _selection(self) -> None:
        """None: the final (β, α) search runs on the trained keys, which a fit without a
        search does not reproduce (the search itself is Tip-Adapter's, checked there)."""
        return None

    def _fit(self, task: Task) -> None:
        check_ranges(self, epochs="int>=0", batch_size="int>=1", lr="lr")
        self._build_cache(task)
        self.best_epoch_ = 0
        self._val_history: list[tuple[int, float]] = []
        if self.epochs > 0:
            self._train(task)
        self._search(task.val)

    def _train(self, task: Task) -> None:
        c = task.n_classes
        bank = task.support.view_bank()  # (V, N, D) raw; normalised per batch
        n_views, n = bank.shape[0], bank.shape[1]
        targets = task.support.labels.to(self._device)
        keys = torch.nn.Parameter(self.keys_.clone())
        # the fused kernel updates the 16.4M ImageNet key parameters in one pass (7x faster per
        # step on CPU than the multi-kernel update), and keeps float16 keys' optimiser arithmetic
        # in float32: the default update's float16 second moment underflows to 0 for gradients
        # under ~8e-3, turning each step into lr·m/eps (10x too large)
        optim = torch.optim.AdamW(
            [keys], lr=self.lr, eps=self.eps, weight_decay=self.weight_decay, fused=True
        )
        sched = cosine_per_step(
            optim, epochs=self.epochs, steps_per_epoch=math.ceil(n / self.batch_size)
        )
        g = torch.Generator().manual_seed(self.seed)
        val_x = val_y = None
        if task.val is not None:
            val_x = l2_normalize(self._to(task.val.features))
            val_y = task.val.labels.to(self._device)
        best = KeepBest(ties="first")
        for epoch in tqdm(
            range(1, self.epochs + 1), desc="tip-adapter-f", disable=not self.progress
        ):
            ep = shuffled_epoch(n, n_views, self.batch_size, g)
            for batch in ep.batches:
                idx, rows = ep.rows(bank, batch)
                x = l2_normalize(self._to(rows))
                logits = self.scale * (x @ self.text_weights_.T) + self.alpha_ * (
                    tip_cache_logits(x, keys, self.key_labels_, c, beta=self.beta_)
                )
                loss = torch.nn.functional.cross_entropy(logits.float(), targets[idx])
                optim.zero_grad(set_to_none=True)
                loss.backward()
                optim.step()
                sched.step()
            if val_x is not None and val_y is not None:
                with torch.no_grad():
                    best.offer(self._accuracy(val_x, val_y, keys.detach()), epoch, keys)
        if val_x is None:
            best.keep(self.epochs, keys)
        (self.keys_,), self.best_epoch_ = best.state, best.epoch
        self._val_history = best.history

    # -- several seeds as one batched model (fewclip.methods.fit_seeds) ---------------------
    @classmethod
    def _seeds_batchable(cls, models: Sequence[Method], tasks: Sequence[Task]) -> bool:
        """Caches of one-key-per-image with the same sorted labels batch (the class-wise sum
        of the cache term is then one reshape for every seed); prototype caches fit alone."""
        first = models[0]
        assert isinstance(first, TipAdapterF)
        if first.prototypes is not None:
            return False
        labels = [torch.sort(t.support.labels).values for t in tasks]
        return all(torch.equal(labels[0], other) for other in labels[1:])

    @classmethod
    def _fit_seeds(cls, models: Sequence[Method], tasks: Sequence[Task]) -> None:
        tips = [m for m in models if isinstance(m, TipAdapterF)]
        assert len(tips) == len(models)
        for m, task in zip(tips, tasks, strict=True):
            check_ranges(m, epochs="int>=0", batch_size="int>=1", lr="lr")
            m._build_cache(task)
            m.best_epoch_ = 0
            m._val_history = []
        if tips[0].epochs > 0:
            _train_keys_seeds(tips, tasks)
        for m, task in zip(tips, tasks, strict=True):
            m._search(task.val)

    def _epoch_selection(self) -> tuple[list[tuple[int, float]], int, str, bool] | None:
        history = getattr(self, "_val_history", [])
        return (history, self.best_epoch_, "first", False) if history else None

    def _accuracy(self, x: Tensor, y: Tensor, keys: Tensor) -> float:
        logits = tip_logits(
            x,
            keys,
            self.key_labels_,
            self.text_weights_,
            alpha=self.alpha_,
            beta=self.beta_,
            scale=self.scale,
        )
        return count_correct(logits, y) / len(y)


def _train_keys_seeds(models: Sequence[TipAdapterF], tasks: Sequence[Task]) -> None:
    """:meth:`TipAdapterF._train` of S seeds (the same hyper-parameters, caches of one size
    with the same labels) as one batched model: keys (S, K, D), batches (S, B, D), batched
    products; each seed draws its epochs from its own generator, is scored on its own
    validation set after each epoch and keeps its own best epoch. The loss is the sum of the
    seeds' mean cross-entropies, so each seed's keys get its own gradient; fused AdamW and the
    cosine schedule act elementwise with one step count, as in a solo run. Each seed of a
    batch equals its solo fit up to the summation order of the batched products. (The solo
    fit keeps its own loop: through this one, a seed's step took 17–25% longer on a CPU at
    ImageNet scale.)
    """
    first = models[0]
    c = tasks[0].n_classes
    banks = [task.support.view_bank() for task in tasks]  # (V, N, D) raw; normalised per batch
    n_views, n = banks[0].shape[0], banks[0].shape[1]
    targets = [task.support.labels.to(first._device) for task in tasks]
    keys = torch.nn.Parameter(torch.stack([m.keys_ for m in models]))  # (S, K, D)
    key_labels = first.key_labels_
    text = torch.stack([m.text_weights_ for m in models])  # (S, C, D)
    # the fused kernel updates the 16.4M ImageNet key parameters in one pass (7x faster per
    # step on CPU than the multi-kernel update), and keeps float16 keys' optimiser arithmetic
    # in float32: the default update's float16 second moment underflows to 0 for gradients
    # under ~8e-3, turning each step into lr·m/eps (10x too large)
    optim = torch.optim.AdamW(
        [keys], lr=first.lr, eps=first.eps, weight_decay=first.weight_decay, fused=True
    )
    sched = cosine_per_step(
        optim, epochs=first.epochs, steps_per_epoch=math.ceil(n / first.batch_size)
    )
    generators = seed_generators([m.seed for m in models])
    vals: list[tuple[Tensor, Tensor] | None] = []
    for m, task in zip(models, tasks, strict=True):
        v = task.val
        if v is None:
            vals.append(None)
        else:
            vals.append((l2_normalize(m._to(v.features)), v.labels.to(m._device)))
    bests = [KeepBest(ties="first") for _ in models]
    scale, alpha, beta = first.scale, first.alpha_, first.beta_
    for epoch in tqdm(range(1, first.epochs + 1), desc="tip-adapter-f", disable=not first.progress):
        ep = SeedEpochs([shuffled_epoch(n, n_views, first.batch_size, g) for g in generators])
        for batch in ep.batches:
            idx, rows = ep.rows(banks, batch)
            x = l2_normalize(first._to(rows))
            sim = torch.bmm(x, keys.mT)
            logits = scale * torch.bmm(x, text.mT) + alpha * class_sum(
                affinity_from_similarity_(sim, beta), key_labels, c
            )
            loss = sum(
                torch.nn.functional.cross_entropy(logits[s].float(), targets[s][idx[s]])
                for s in range(len(models))
            )
            optim.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[union-attr]
            optim.step()
            sched.step()
        for s, (m, val) in enumerate(zip(models, vals, strict=True)):
            if val is not None:
                with torch.no_grad():
                    score = m._accuracy(val[0], val[1], keys[s].detach())
                bests[s].offer(score, epoch, keys[s])
    for s, (m, val) in enumerate(zip(models, vals, strict=True)):
        best = bests[s]
        if val is None:
            best.keep(m.epochs, keys[s])
        (m.keys_,), m.best_epoch_ = best.state, best.epoch
        m._val_history = best.history
