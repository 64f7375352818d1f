"""TIP-X (Udandarao et al., ICCV 2023, "SuS-X: Training-Free Name-Only Transfer of
Vision-Language Models"), used here with a few-shot support set.

Tip-Adapter compares a test image with the support images in image space only. TIP-X adds a
second affinity computed through the text side: every image gets a *signature*, its softmaxed
similarities to the C class text embeddings,

    p(x) = softmax(x·Tᵀ / τ)            (τ = 0.5)

and the affinity between a test image and support image j is the negated KL divergence of their
signatures, rescaled into the range of the image-image cosine affinities:

    M_ij   = KL(p(x_i) ‖ p(k_j)) = Σ_c p_c(x_i)·(log p_c(x_i) − log p_c(k_j))
    ψ(M)   = (M − min M)/(max M − min M)·(max A − min A) + min A,    A = x·keysᵀ
    logits = 100·x·Tᵀ + α·exp(−β(1 − x·keysᵀ))·Y + γ·(−ψ(M))·Y

with Y the one-hot support labels and (α, β, γ) searched on validation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from fewclip.errors import InvalidValueError
from fewclip.functional import (
    cache_grid_counts,
    cache_keys,
    class_sum,
    first_best,
    l2_normalize,
    reference_grid,
    tip_affinity,
)
from fewclip.methods._training import train_dtype
from fewclip.methods.base import Method, register
from fewclip.task import Task

__all__ = ["TipX", "image_text_signature", "kl_divergence_matrix"]


def image_text_signature(x: Tensor, text_weights: Tensor, *, temperature: float = 0.5) -> Tensor:
    """``softmax(x·Tᵀ / τ)`` → (N, C): an image's distribution over the class texts."""
    return torch.softmax((x @ text_weights.T) / temperature, dim=-1)


def kl_divergence_matrix(p: Tensor, q: Tensor) -> Tensor:
    """``KL(p_i ‖ q_j) = Σ_c p_ic·(log p_ic − log q_jc)`` for every pair → (N, K).

    ``p`` (N, C) and ``q`` (K, C) are rows of probabilities; computed as
    ``Σ_c p log p − p·(log q)ᵀ`` (one matrix product; ``0·log 0 = 0``).
    """
    return torch.xlogy(p, p).sum(dim=1, keepdim=True) - p @ torch.log(q).T


@register("tip-x")
class TipX(Method):
    """TIP-X: Tip-Adapter plus a KL-divergence affinity between image-text signatures.

    ``logits = 100·x·Tᵀ + α·exp(−β(1 − x·keysᵀ))·Y − γ·ψ(KL(p(x) ‖ p(keys)))·Y`` (module
    docstring; Udandarao et al., ICCV 2023). The support set is the few-shot cache (keys = mean of
    the raw augmented views, L2-normalised, as Tip-Adapter); SuS-X's name-only support sets are
    out of scope.

    The rescaling ψ is affine; the reference computes its min/max over the matrix of the batch
    being evaluated, so a prediction depends on the other images of the batch. Here ψ is fixed
    at fit time from the validation set (the matrix the reference searches on), or from the
    support images themselves without validation, so predictions are per-image (inductive). Only
    ψ's slope matters when every class has the same number of shots. The class-wise sums of KL
    divergences are computed in closed form, ``Σ_{j∈c} KL(p ‖ q_j) = n_c·Σ p log p −
    p·Σ_{j∈c} log q_j``, so predicting never forms the (N, K) divergence matrix.

    Args:
        alpha, beta, gamma: used as they are when no search runs.
        search: search (α, β, γ) on ``task.val`` when present (exact vectorised grid,
            ``functional.cache_grid_counts``; α outer, β, γ inner, strict ``>`` keeps the first
            best, as the reference loop).
        search_scale, search_step: grid ``β_i = 1 + i·(S_β − 1)/n_β``,
            ``α_i = 0.1 + i·(S_α − 0.1)/n_α``, γ like α. The reference uses (50, 50, 30) ×
            (200, 20, 50); the default n_β = 50 keeps the search within seconds at ImageNet
            scale.
        temperature: signature temperature τ (0.5 in the reference).
        scale: zero-shot logit scale (100).
        dtype, device: compute precision and device (the search runs in float32 for float16).

    Attributes:
        text_weights_ (C, D) tensor: the task's L2-normalised text weights T.
        keys_ (K, D) tensor: the cache keys, L2-normalised means of the raw support views,
            sorted by class.
        key_labels_ (K,) int64 tensor: the class id of each key.
        class_log_signature_ (C, C) tensor: row c sums the log signatures log p(k_j) of the
            keys of class c.
        class_counts_ (C,) tensor: the number of keys of each class.
        alpha_ float: the weight α of the cache affinity (searched or ``alpha``).
        beta_ float: the sharpness β of the cache affinity (searched or ``beta``).
        gamma_ float: the weight γ of the KL term (searched or ``gamma``).
        kl_range_ (float, float): min and max KL divergence between the validation (or support)
            images and the keys: ψ's input range.
        affinity_range_ (float, float): min and max affinity x·keysᵀ over the same images:
            ψ's output range.
        val_accuracy_ float or None: ``task.val`` accuracy (%) at the chosen (α, β, γ); None
            when no search ran.
    """

    training_free = True
    uses_validation = True
    new_class_refusal = "its cache's one-hot labels name the training classes only"
    chooses_on_validation = frozenset({"search"})
    quick_params: ClassVar[Mapping[str, Any]] = {"search_step": (10, 5, 4)}

    _state_tensors: ClassVar[tuple[str, ...]] = (
        "text_weights_",
        "keys_",
        "key_labels_",
        "class_log_signature_",
        "class_counts_",
    )
    _state_values: ClassVar[tuple[str, ...]] = (
        "alpha_",
        "beta_",
        "gamma_",
        "kl_range_",
        "affinity_range_",
        "val_accuracy_",
    )

    def __init__(
        self,
        *,
        alpha: float = 1.0,
        beta: float = 1.0,
        gamma: float = 0.1,
        search: bool = True,
        search_scale: Sequence[float] = (50.0, 50.0, 30.0),
        search_step: Sequence[int] = (50, 20, 50),
        temperature: float = 0.5,
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
        self.temperature = temperature
        self.scale = scale
        self.dtype = dtype
        self.device = device

    # -- the KL term ------------------------------------------------------------------------
    def _kl_sums(self, x: Tensor) -> Tensor:
        """``Σ_{j∈c} KL(p(x_i) ‖ p(k_j))`` for every class → (N, C)."""
        p = image_text_signature(x, self.text_weights_.to(x.dtype), temperature=self.temperature)
        negentropy = torch.xlogy(p, p).sum(dim=1, keepdim=True)
        counts = self.class_counts_.to(x.dtype)
        return negentropy * counts - p @ self.class_log_signature_.to(x.dtype).T

    def _kl_logits(self, x: Tensor) -> Tensor:
        """``−ψ(KL)·Y``: the rescaled negative divergences summed per class → (N, C)."""
        kl_min, kl_max = self.kl_range_
        a_min, a_max = self.affinity_range_
        slope = (a_max - a_min) / (kl_max - kl_min) if kl_max > kl_min else 0.0
        counts = self.class_counts_.to(x.dtype)
        return -slope * self._kl_sums(x) + (slope * kl_min - a_min) * counts

    # -- fitting ----------------------------------------------------------------------------
    def _fit(self, task: Task) -> None:
        if len(self.search_scale) != 3 or len(self.search_step) != 3:
            raise InvalidValueError(
                "search_scale and search_step: expected three entries each (beta, alpha, gamma), "
                f"found {tuple(self.search_scale)} and {tuple(self.search_step)}"
            )
        if min(int(s) for s in self.search_step) < 1:
            raise InvalidValueError(
                f"search_step: expected positive integers, found {self.search_step}"
            )
        if not self.temperature > 0:
            raise InvalidValueError(
                f"temperature: expected a positive value, found {self.temperature}"
            )
        dev, c = self._device, task.n_classes
        self.text_weights_ = l2_normalize(self._to(task.text_weights))
        keys = cache_keys(self._to(task.support.view_bank()))
        labels = task.support.labels.to(dev)
        order = torch.argsort(labels, stable=True)
        self.keys_, self.key_labels_ = keys[order], labels[order]
        q = image_text_signature(self.keys_, self.text_weights_, temperature=self.temperature)
        log_q = torch.log(q)
        self.class_log_signature_ = log_q.new_zeros(c, c).index_add_(0, self.key_labels_, log_q)
        self.class_counts_ = torch.bincount(self.key_labels_, minlength=c).to(self._dtype)
        self.alpha_, self.beta_ = float(self.alpha), float(self.beta)
        self.gamma_ = float(self.gamma)
        self.val_accuracy_: float | None = None

        sdt = train_dtype(self._dtype)
        queries = task.val.features if task.val is not None else task.support.features
        xq = l2_normalize(queries.to(dev, sdt))
        affinity = self._ranges(xq, log_q.to(sdt))
        if self.search and task.val is not None:
            self._search(xq, task.val.labels.to(dev), affinity)

    def _ranges(self, xq: Tensor, log_q: Tensor, chunk_bytes: int = 256 * 2**20) -> Tensor | None:
        """Set the min/max of the KL divergences and of the affinities between ``xq`` and the
        cache (ψ's constants); returns the (N, K) affinity when it is small enough to keep."""
        keys = self.keys_.to(xq.dtype)
        text = self.text_weights_.to(xq.dtype)
        n, k = xq.shape[0], keys.shape[0]
        keep = n * k * xq.element_size() <= 512 * 2**20
        kept = []
        kl_lo = a_lo = float("inf")
        kl_hi = a_hi = float("-inf")
        rows = max(1, chunk_bytes // max(1, k * xq.element_size()))
        for s in range(0, n, rows):
            xs = xq[s : s + rows]
            a = xs @ keys.T
            p = image_text_signature(xs, text, temperature=self.temperature)
            m = torch.xlogy(p, p).sum(dim=1, keepdim=True) - p @ log_q.T  # KL(p_i ‖ q_j)
            kl_lo, kl_hi = min(kl_lo, float(m.min())), max(kl_hi, float(m.max()))
            a_lo, a_hi = min(a_lo, float(a.min())), max(a_hi, float(a.max()))
            if keep:
                kept.append(a)
        self.kl_range_ = (kl_lo, kl_hi)
        self.affinity_range_ = (a_lo, a_hi)
        return torch.cat(kept) if keep else None

    def _grids(self) -> tuple[list[float], list[float], list[float]]:
        """(β, α, γ) grids: β from 1 (the reference's TIP-X grid), α and γ from 0.1."""
        s_b, s_a, s_g = (float(v) for v in self.search_scale)
        n_b, n_a, n_g = (int(v) for v in self.search_step)
        betas = [i * (s_b - 1) / n_b + 1 for i in range(n_b)]
        return betas, reference_grid(s_a, n_a), reference_grid(s_g, n_g)

    def _selection(self) -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
        if not self.search or self.val_accuracy_ is None:
            return None
        betas, alphas, gammas = self._grids()
        grid = [  # the reference visits α, then β, then γ
            {"search": False, "beta": b, "alpha": a, "gamma": g}
            for a in alphas
            for b in betas
            for g in gammas
        ]
        chosen = {"search": False, "beta": self.beta_, "alpha": self.alpha_, "gamma": self.gamma_}
        return grid, chosen

    def _search(self, x: Tensor, y: Tensor, affinity: Tensor | None) -> None:
        betas, alphas, gammas = self._grids()
        base = self.scale * (x @ self.text_weights_.to(x.dtype).T)
        counts = cache_grid_counts(
            x,
            y,
            self.keys_.to(x.dtype),
            self.key_labels_,
            base,
            betas,
            alphas,
            extra=self._kl_logits(x),
            gammas=gammas,
            affinity=affinity,
        )  # (β, 1, γ, α)
        ai, bi, gi = first_best(counts[:, 0].permute(2, 0, 1))  # reference order α, β, γ
        self.alpha_, self.beta_, self.gamma_ = alphas[ai], betas[bi], gammas[gi]
        self.val_accuracy_ = 100.0 * int(counts[bi, 0, gi, ai]) / x.shape[0]

    def _logits(self, x: Tensor) -> Tensor:
        zs = self.scale * (x @ self.text_weights_.T)
        affinity = tip_affinity(x, self.keys_, beta=self.beta_)
        cache = class_sum(affinity, self.key_labels_, len(self.classnames_))
        return zs + self.alpha_ * cache + self.gamma_ * self._kl_logits(x)
