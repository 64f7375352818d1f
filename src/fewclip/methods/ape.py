"""APE and APE-T (Zhu et al., ICCV 2023, "Not All Features Matter: Enhancing Few-shot CLIP with
Adaptive Prior Refinement").

**Channel selection.** For every feature channel d, with the L2-normalised text classifier t_k
(C, D) and cache keys k_j (mean of augmented views, L2-normalised), grouped by class together
with their class's text row (M_c = 1 + n_c vectors per class):

    sim_d = mean over pairs of vectors (f, g) from different classes of f_d·g_d
    J_d   = −w₁·sim_d + w₂·Var_k(t_kd)          (unbiased variance over classes)

and the Q channels with the largest J_d are kept (x' = normalise(x[channels]), likewise keys
and text rows). Channels on which all classes look alike, and on which text classifiers vary
little, are dropped.

**APE (training-free).** Cache values are re-weighted by how much the zero-shot prediction of
each cache image disagrees with its label:

    KL_j   = D_KL(onehot(y_j) ‖ softmax(k'_j·T'ᵀ))  in bits: log₂((1 + ε)/(p_j,y_j + ε)), ε = 1e-6
    logits = scale·x·Tᵀ + α·Σ_j exp(−β(1 − x'·k'_jᵀ))·exp(γ·KL_j)·onehot(y_j)

with (β, α, γ) searched on validation.

**APE-T.** A category residual R (C, Q), initialised at zero, is added on the selected channels
of both the text classifier and every cache key of that class, and a per-key value weight v_j
(initialised at 1) replaces the KL re-weighting:

    t̃_k = t_k + R_k (on the channels),  k̃_j = k_j + R_{y_j} (on the channels)
    logits = scale·x·T̃ᵀ + α·Σ_j exp(−β(1 − x·k̃_jᵀ))·v_j·onehot(y_j)

trained with cross-entropy (β, α fixed at their initial values), best epoch on validation, then
(β, α) searched again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor
from tqdm.auto import tqdm

from fewclip.errors import InvalidValueError
from fewclip.functional import (
    cache_grid_counts,
    cache_keys,
    class_sum,
    count_correct,
    first_best,
    l2_normalize,
    reference_grid,
    tip_affinity,
)
from fewclip.methods._training import (
    KeepBest,
    check_ranges,
    cosine_per_step,
    shuffled_epoch,
    train_dtype,
    view_rows,
)
from fewclip.methods.base import Method, register
from fewclip.task import Task

__all__ = ["APE", "APET", "ape_criterion", "ape_zero_shot_kl"]

#: Largest per-view tables (cache affinity and normalised rows) APE-T precomputes.
_TABLE_BYTES = 512 * 2**20


def ape_criterion(
    text_weights: Tensor,
    keys: Tensor,
    key_labels: Tensor,
    *,
    weights: Sequence[float] = (0.7, 0.3),
) -> Tensor:
    """APE's channel criterion ``J_d = −w₁·sim_d + w₂·Var_k(t_kd)`` → (D,).

    ``text_weights`` (C, D) and ``keys`` (K, D) L2-normalised, ``key_labels`` (K,). ``sim_d`` is
    the mean of ``f_d·g_d`` over every ordered pair of vectors (f, g) from two different classes,
    where class c holds its text row and its keys (the reference's quadruple loop, in closed
    form: with per-class sums S_c and total T = Σ_c S_c, ``Σ_{c≠c'} S_c·S_c' = T² − Σ_c S_c²``).
    The variance is the unbiased variance over classes of the text rows.
    """
    c = text_weights.shape[0]
    if c < 2:
        raise InvalidValueError(f"text_weights: APE needs at least 2 classes, found {c}")
    if len(weights) != 2:
        raise InvalidValueError(
            f"weights: expected two entries (w_sim, w_var), found {tuple(weights)}"
        )
    t = text_weights.double()
    labels = key_labels.to(t.device)
    sums = t.clone().index_add_(0, labels, keys.double())  # S_c: text row + keys of class c
    sizes = 1.0 + torch.bincount(labels, minlength=c).double()  # M_c
    total = sums.sum(dim=0)
    sim = (total * total - (sums * sums).sum(dim=0)) / (sizes.sum() ** 2 - (sizes**2).sum())
    return -float(weights[0]) * sim + float(weights[1]) * t.var(dim=0)


def ape_zero_shot_kl(
    keys: Tensor, key_labels: Tensor, text_weights: Tensor, *, eps: float = 1e-6
) -> Tensor:
    """``KL(onehot(y_j) ‖ softmax(k_j·Tᵀ))`` in bits for every cache key → (K,).

    As the reference: ``Σ_c v_c·log₂((v_c + ε)/(p_c + ε))`` with v the one-hot label and p the
    softmax of the raw cosine similarities (no temperature); only the label's term is non-zero,
    so it equals ``log₂((1 + ε)/(p_y + ε))``.
    """
    p = torch.softmax(keys @ text_weights.T, dim=1)
    p_y = p.gather(1, key_labels.view(-1, 1)).squeeze(1)
    return torch.log2((1.0 + eps) / (p_y + eps))


def _select(
    text_weights: Tensor, keys: Tensor, labels: Tensor, weights: Sequence[float], channels: int
) -> Tensor:
    """The ``channels`` channels with the largest criterion, in increasing order."""
    crit = ape_criterion(l2_normalize(text_weights), keys, labels, weights=weights)
    return torch.topk(crit, k=channels).indices.sort().values.to(keys.device)


@register("ape")
class APE(Method):
    """Training-free APE: refined channels for the cache, cache values re-weighted by KL.

    ``logits = scale·x·Tᵀ + α·Σ_j exp(−β(1 − x'·k'_jᵀ))·exp(γ·KL_j)·onehot(y_j)`` (module
    docstring; Zhu et al., ICCV 2023).

    Args:
        alpha, beta, gamma: used as they are when no search runs.
        search: search (β, α, γ) on ``task.val`` when the task has one (exact vectorised grid,
            ``functional.cache_grid_counts``; β outer, α, γ inner, strict ``>`` keeps the first
            best, as the reference loop).
        search_scale, search_step: grid ``β_i = 0.1 + i·(S_β − 0.1)/n_β``, α likewise,
            ``γ_i = i·S_γ/n_γ`` (the reference's γ grid starts at 0). The reference ImageNet
            config is (7, 7, 0.5) × (200, 20, 5); the other datasets use (7, 7, 1) × (200, 20, 20)
            (EuroSAT (30, 5, 1.5)). The default n_β = 32 (Δβ ≈ 0.22) keeps the fit under 10 s at
            ImageNet 16-shot scale on two CPU cores.
        channels: number Q of channels kept; ``None`` uses ``round(channel_fraction·D)``.
        channel_fraction: Q/D when ``channels`` is None (reference RN50: 500/1024 on ImageNet,
            700–900/1024 elsewhere).
        criterion_weights: (w₁, w₂) of the channel criterion ((0.7, 0.3) in most reference
            configs for APE, (0.2, 0.8) for APE-T).
        scale: zero-shot logit scale (100).
        dtype, device: compute precision and device (the search runs in float32 for float16).

    Attributes:
        text_weights_ (C, D) tensor: the L2-normalised text classifier T.
        channels_ (Q,) int64 tensor: the refined channels, in the criterion's order.
        keys_ (K, Q) tensor: the cache keys on those channels, re-normalised, sorted by class.
        key_labels_ (K,) int64 tensor: the class of each key.
        key_kl_ (K,) tensor: KL_j, each key's zero-shot divergence that γ weighs.
        alpha_, beta_, gamma_ (float): the α, β, γ in use (searched on validation, else given).
        val_accuracy_ (float or None): validation accuracy in % at the chosen point; None
            without a search.
    """

    training_free = True
    uses_validation = True
    new_class_refusal = "its cache's one-hot labels name the training classes only"
    chooses_on_validation = frozenset({"search"})
    quick_params: ClassVar[Mapping[str, Any]] = {"search_step": (10, 5, 3)}

    _state_tensors: ClassVar[tuple[str, ...]] = (
        "text_weights_",
        "channels_",
        "keys_",
        "key_labels_",
        "key_kl_",
    )
    _state_values: ClassVar[tuple[str, ...]] = ("alpha_", "beta_", "gamma_", "val_accuracy_")

    def __init__(
        self,
        *,
        alpha: float = 1.0,
        beta: float = 1.0,
        gamma: float = 0.1,
        search: bool = True,
        search_scale: Sequence[float] = (7.0, 7.0, 0.5),
        search_step: Sequence[int] = (32, 20, 5),
        channels: int | None = None,
        channel_fraction: float = 0.5,
        criterion_weights: Sequence[float] = (0.7, 0.3),
        scale: float = 100.0,
        dtype: str = "float32",
        device: str = "cpu",
    ):
        self.alpha = alpha
        self.beta = beta
        self.gamma = gamma
        self.search = search
        self.search_scale = search_scale
        self.search_step = search_step
        self.channels = channels
        self.channel_fraction = channel_fraction
        self.criterion_weights = criterion_weights
        self.scale = scale
        self.dtype = dtype
        self.device = device

    # -- shared helpers ---------------------------------------------------------------------
    def _n_channels(self, dim: int) -> int:
        if self.channels is not None:
            if not 1 <= int(self.channels) <= dim:
                raise InvalidValueError(
                    f"channels: expected an integer in [1, {dim}], found {self.channels}"
                )
            return int(self.channels)
        if not 0.0 < self.channel_fraction <= 1.0:
            raise InvalidValueError(
                f"channel_fraction: expected a value in (0, 1], found {self.channel_fraction}"
            )
        return max(1, round(self.channel_fraction * dim))

    def _check_grid(self, n: int) -> None:
        if len(self.search_scale) != n or len(self.search_step) != n:
            raise InvalidValueError(
                f"search_scale and search_step: expected {n} entries each, found "
                f"{tuple(self.search_scale)} and {tuple(self.search_step)}"
            )
        if min(int(s) for s in self.search_step) < 1:
            raise InvalidValueError(
                f"search_step: expected positive integers, found {self.search_step}"
            )

    def _sorted_cache(self, task: Task) -> tuple[Tensor, Tensor]:
        """Cache keys (mean of raw views, normalised) and labels, sorted by class."""
        keys = cache_keys(self._to(task.support.view_bank()))
        labels = task.support.labels.to(self._device)
        order = torch.argsort(labels, stable=True)
        return keys[order], labels[order]

    def _grids(self) -> tuple[list[float], list[float], list[float]]:
        sb, sa = float(self.search_scale[0]), float(self.search_scale[1])
        betas = reference_grid(sb, int(self.search_step[0]))
        alphas = reference_grid(sa, int(self.search_step[1]))
        gammas: list[float] = []
        if len(self.search_step) > 2:
            n_g, s_g = int(self.search_step[2]), float(self.search_scale[2])
            gammas = [i * s_g / n_g for i in range(n_g)]
        return betas, alphas, gammas

    # -- APE --------------------------------------------------------------------------------
    def _fit(self, task: Task) -> None:
        self._check_grid(3)
        q = self._n_channels(task.dim)
        self.text_weights_ = l2_normalize(self._to(task.text_weights))
        keys, self.key_labels_ = self._sorted_cache(task)
        self.channels_ = _select(
            self.text_weights_, keys, self.key_labels_, self.criterion_weights, q
        )
        self.keys_ = l2_normalize(keys[:, self.channels_])
        text_sel = l2_normalize(self.text_weights_[:, self.channels_])
        self.key_kl_ = ape_zero_shot_kl(self.keys_, self.key_labels_, text_sel)
        self.alpha_, self.beta_, self.gamma_ = (
            float(self.alpha),
            float(self.beta),
            float(self.gamma),
        )
        self.val_accuracy_: float | None = None
        if self.search and task.val is not None:
            self._search(task)

    def _selection(self) -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
        if not self.search or self.val_accuracy_ is None:
            return None
        betas, alphas, gammas = self._grids()
        grid = [
            {"search": False, "beta": b, "alpha": a, "gamma": g}
            for b in betas
            for a in alphas
            for g in gammas
        ]
        chosen = {"search": False, "beta": self.beta_, "alpha": self.alpha_, "gamma": self.gamma_}
        return grid, chosen

    def _search(self, task: Task) -> None:
        assert task.val is not None
        betas, alphas, gammas = self._grids()
        sdt = train_dtype(self._dtype)
        x = l2_normalize(task.val.features.to(self._device, sdt))
        y = task.val.labels.to(self._device)
        base = self.scale * (x @ self.text_weights_.to(sdt).T)
        kl = self.key_kl_.to(sdt)
        weights = torch.exp(torch.tensor(gammas, dtype=sdt, device=self._device)[:, None] * kl)
        counts = cache_grid_counts(
            l2_normalize(x[:, self.channels_]),
            y,
            self.keys_.to(sdt),
            self.key_labels_,
            base,
            betas,
            alphas,
            key_weights=weights,
        )  # (β, γ, 1, α)
        bi, ai, gi = first_best(counts[:, :, 0, :].permute(0, 2, 1))  # reference order β, α, γ
        self.beta_, self.alpha_, self.gamma_ = betas[bi], alphas[ai], gammas[gi]
        self.val_accuracy_ = 100.0 * int(counts[bi, gi, 0, ai]) / x.shape[0]

    def _logits(self, x: Tensor) -> Tensor:
        zs = self.scale * (x @ self.text_weights_.T)
        xs = l2_normalize(x[:, self.channels_])
        affinity = tip_affinity(xs, self.keys_, beta=self.beta_)
        weighted = affinity.mul_(torch.exp(self.gamma_ * self.key_kl_))
        return zs + self.alpha_ * class_sum(weighted, self.key_labels_, len(self.classnames_))


@register("ape-t")
class APET(APE):
    """APE-T: a trainable category residual on the refined channels of text and cache keys.

    ``logits = scale·x·T̃ᵀ + α·Σ_j exp(−β(1 − x·k̃_jᵀ))·v_j·onehot(y_j)`` with
    ``t̃_k = t_k + R_k`` and ``k̃_j = k_j + R_{y_j}`` on the selected channels (module docstring;
    Zhu et al., ICCV 2023). As the released code: the residual R (C, Q) starts at zero and the
    value weights v at one; AdamW (weight decay 0.1), cosine schedule per iteration, batch 256,
    cross-entropy with β, α fixed at ``beta``/``alpha``; each epoch draws one stored augmented
    view per support image; the best epoch on validation is kept (strict ``>``; the last one
    without validation); then (β, α) are searched on validation with the Tip grid
    (``search_scale[:2]``, ``search_step[:2]``). The keys are full-dimensional and are not
    re-normalised after the residual is added.

    Args (beyond ``APE``'s; ``gamma`` and the γ grid are not used):
        epochs, lr, eps, weight_decay, batch_size: training settings. Defaults: the reference's
            ImageNet config (lr 1e-4, eps 1e-3, 20 epochs); most other datasets use lr 1e-3
            and 30 epochs (fewer steps per epoch there).
        seed: seed of shuffling and view draws.
        progress: show a progress bar over epochs.

    Attributes:
        text_weights_ (C, D) tensor: the adapted text classifier T̃ (text plus residual).
        keys_ (K, D) tensor: the adapted full-dimensional cache keys k̃, sorted by class.
        key_labels_ (K,) int64 tensor: the class of each key.
        channels_ (Q,) int64 tensor: the refined channels the residual lives on.
        residual_ (C, Q) tensor: the trained category residual R.
        value_weights_ (K,) tensor: the trained cache value weights v.
        alpha_, beta_ (float): the α and β in use (searched on validation, else given).
        best_epoch_ (int): the kept epoch (1-based; the last without validation, 0 untrained).
        val_accuracy_ (float or None): validation accuracy in % at (β, α); None without a search.
    """

    training_free = False
    uses_validation = True
    chooses_on_validation = frozenset({"epoch"})
    quick_params: ClassVar[Mapping[str, Any]] = {"epochs": 3, "search_step": (10, 5)}

    _state_tensors: ClassVar[tuple[str, ...]] = (
        "text_weights_",
        "channels_",
        "keys_",
        "key_labels_",
        "residual_",
        "value_weights_",
    )
    _state_values: ClassVar[tuple[str, ...]] = ("alpha_", "beta_", "val_accuracy_", "best_epoch_")

    def __init__(
        self,
        *,
        alpha: float = 1.0,
        beta: float = 1.0,
        gamma: float = 0.1,
        search: bool = True,
        search_scale: Sequence[float] = (7.0, 7.0),
        search_step: Sequence[int] = (32, 20),
        channels: int | None = None,
        channel_fraction: float = 0.5,
        criterion_weights: Sequence[float] = (0.2, 0.8),
        epochs: int = 20,
        lr: float = 1e-4,
        eps: float = 1e-3,
        weight_decay: float = 0.1,
        batch_size: int = 256,
        scale: float = 100.0,
        seed: int = 1,
        dtype: str = "float32",
        device: str = "cpu",
        progress: bool = False,
    ):
        super().__init__(
            alpha=alpha,
            beta=beta,
            gamma=gamma,
            search=search,
            search_scale=search_scale,
            search_step=search_step,
            channels=channels,
            channel_fraction=channel_fraction,
            criterion_weights=criterion_weights,
            scale=scale,
            dtype=dtype,
            device=device,
        )
        self.epochs = epochs
        self.lr = lr
        self.eps = eps
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.seed = seed
        self.progress = progress

    def _selection(self) -> None:
        """None: the (β, α) search runs on the trained residual, which a fit without a search
        does not reproduce."""
        return None

    def _epoch_selection(self) -> tuple[list[tuple[int, float]], int, str, bool] | None:
        history = getattr(self, "_val_history", [])
        return (history, self.best_epoch_, "first", False) if history else None

    def _fit(self, task: Task) -> None:
        self._check_grid(2)
        check_ranges(self, epochs="int>=0", batch_size="int>=1", lr="lr")
        q = self._n_channels(task.dim)
        tdt = train_dtype(self._dtype)
        dev = self._device
        keys, self.key_labels_ = self._sorted_cache(task)
        keys = keys.to(tdt)
        text = l2_normalize(task.text_weights.to(dev, tdt))
        self.channels_ = _select(text, keys, self.key_labels_, self.criterion_weights, q)
        self.alpha_, self.beta_ = float(self.alpha), float(self.beta)
        residual = torch.zeros(task.n_classes, q, dtype=tdt, device=dev)
        values = torch.ones(keys.shape[0], dtype=tdt, device=dev)
        self.best_epoch_ = 0
        self._val_history: list[tuple[int, float]] = []
        val = None
        if task.val is not None:
            xv = l2_normalize(task.val.features.to(dev, tdt))
            val = (xv, task.val.labels.to(dev), xv @ keys.T, xv @ text.T)
        if self.epochs > 0:
            residual, values = self._train(task, keys, text, residual, values, val)
        self.residual_, self.value_weights_ = residual.to(self._dtype), values.to(self._dtype)
        keys_t, text_t = keys.clone(), text.clone()
        keys_t[:, self.channels_] += residual[self.key_labels_]
        text_t[:, self.channels_] += residual
        self.keys_, self.text_weights_ = keys_t.to(self._dtype), text_t.to(self._dtype)
        self.val_accuracy_: float | None = None
        if self.search and val is not None:
            xv, yv, a0, _ = val
            betas, alphas, _ = self._grids()
            adapted = a0 + (xv[:, self.channels_] @ residual.T)[:, self.key_labels_]
            counts = cache_grid_counts(
                xv,
                yv,
                keys_t,
                self.key_labels_,
                self.scale * (xv @ text_t.T),
                betas,
                alphas,
                key_weights=values.unsqueeze(0),
                affinity=adapted,
            )[:, 0, 0, :]
            bi, ai = first_best(counts)
            self.beta_, self.alpha_ = betas[bi], alphas[ai]
            self.val_accuracy_ = 100.0 * int(counts[bi, ai]) / xv.shape[0]

    def _cache_logits(self, base: Tensor, xr: Tensor, values: Tensor, n_classes: int) -> Tensor:
        """α·Σ_j exp(β(x·k̃_j − 1))·v_j·onehot(y_j) from ``base = exp(β(x·kᵀ − 1))`` (B, K)
        and ``xr = x'·Rᵀ`` (B, C): the residual only shifts each class's keys, so
        ``exp(β(x·k̃_j − 1)) = base_j·exp(β·xr_{y_j})`` and the class factor comes out of the sum.
        """
        summed = class_sum(base * values, self.key_labels_, n_classes)
        return self.alpha_ * torch.exp(self.beta_ * xr) * summed

    def _train(
        self,
        task: Task,
        keys: Tensor,
        text: Tensor,
        residual: Tensor,
        values: Tensor,
        val: tuple[Tensor, Tensor, Tensor, Tensor] | None,
    ) -> tuple[Tensor, Tensor]:
        c, tdt, dev = task.n_classes, keys.dtype, self._device
        bank = task.support.view_bank()
        n_views, n = bank.shape[0], bank.shape[1]
        targets = task.support.labels.to(dev)
        res = torch.nn.Parameter(residual.clone())
        vw = torch.nn.Parameter(values.clone())
        optim = torch.optim.AdamW(
            [res, vw], lr=self.lr, eps=self.eps, weight_decay=self.weight_decay, fused=True
        )
        sched = cosine_per_step(optim, epochs=self.epochs, steps_per_epoch=-(-n // self.batch_size))
        g = torch.Generator().manual_seed(self.seed)
        ch = self.channels_
        best = KeepBest(ties="first")
        val_base: Tensor | None = None
        # The cache affinity of a stored view does not change during training: when the epochs
        # draw more rows than there are stored views, and the table fits a budget, it is
        # computed once for every view and each full step gathers its rows' entries. The table
        # is computed in products of exactly ``batch_size`` rows (the last one overlapping), as
        # the steps compute them, and a shorter last batch computes its own: a product's rows
        # can round differently with another row count when it runs on several threads.
        bs, rows_all = self.batch_size, n_views * n
        table_bytes = rows_all * (n + bank.shape[2]) * keys.element_size()
        tables = self.epochs > n_views and rows_all >= bs and table_bytes <= _TABLE_BYTES
        if tables:
            unit = l2_normalize(bank.to(dev, tdt)).view(rows_all, -1)
            base_all = unit.new_empty(rows_all, n)
            starts = [*range(0, rows_all - bs + 1, bs)] + ([rows_all - bs] if rows_all % bs else [])
            with torch.no_grad():
                for r0 in starts:
                    base_all[r0 : r0 + bs] = tip_affinity(unit[r0 : r0 + bs], keys, beta=self.beta_)
        for epoch in tqdm(range(1, self.epochs + 1), desc="ape-t", disable=not self.progress):
            ep = shuffled_epoch(n, n_views, bs, g)
            for batch in ep.batches:
                idx = ep.order[batch]
                if tables:
                    flat = (ep.view_of[idx] * n + idx).to(dev)
                    x = unit.index_select(0, flat)
                    with torch.no_grad():
                        if len(idx) == bs:
                            base = base_all.index_select(0, flat)
                        else:
                            base = tip_affinity(x, keys, beta=self.beta_)
                        xt = x @ text.T
                else:
                    x = l2_normalize(view_rows(bank, ep.view_of[idx], idx).to(dev, tdt))
                    with torch.no_grad():
                        base = tip_affinity(x, keys, beta=self.beta_)
                        xt = x @ text.T
                xr = x[:, ch] @ res.T
                logits = self.scale * (xt + xr) + self._cache_logits(base, xr, vw, c)
                loss = torch.nn.functional.cross_entropy(logits, targets[idx])
                optim.zero_grad(set_to_none=True)
                loss.backward()
                optim.step()
                sched.step()
            if val is not None:
                xv, yv, a0, t0 = val
                if val_base is None:
                    val_base = torch.exp((a0 - 1.0) * self.beta_)
                with torch.no_grad():
                    xr = xv[:, ch] @ res.T
                    logits = self.scale * (t0 + xr) + self._cache_logits(val_base, xr, vw, c)
                    acc = count_correct(logits, yv) / len(yv)
                best.offer(acc, epoch, res, vw)
        if val is None:
            best.keep(self.epochs, res, vw)
        self.best_epoch_ = best.epoch
        self._val_history = best.history
        return best.state[0], best.state[1]

    def _logits(self, x: Tensor) -> Tensor:
        zs = self.scale * (x @ self.text_weights_.T)
        affinity = tip_affinity(x, self.keys_, beta=self.beta_)
        w = self.value_weights_
        weighted = affinity * w if affinity.requires_grad or w.requires_grad else affinity.mul_(w)
        return zs + self.alpha_ * class_sum(weighted, self.key_labels_, len(self.classnames_))
