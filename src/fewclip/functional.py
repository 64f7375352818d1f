"""The math every method shares, as plain functions on torch tensors.

This module is a stable public contract: reproduction tests depend on it. Every function keeps
the dtype and device of its inputs (float64 in gives float64 math) and never moves data between
devices.

Notation: N queries, K cache entries (keys), C classes, D feature dimension, V augmented views.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = [
    "cache_keys",
    "class_sum",
    "count_correct_over_alpha",
    "first_best",
    "l2_normalize",
    "reference_grid",
    "search_tip",
    "text_classifier",
    "tip_affinity",
    "tip_cache_logits",
    "tip_grid_counts",
    "tip_logits",
]


def l2_normalize(x: Tensor, dim: int = -1) -> Tensor:
    """``x / ‖x‖₂`` along ``dim`` (as CLIP's ``x / x.norm(dim=-1, keepdim=True)``)."""
    return x / x.norm(dim=dim, keepdim=True)


def text_classifier(prompt_embeddings: Tensor) -> Tensor:
    """Zero-shot text classifier from raw prompt embeddings.

    ``(C, T, D) → (C, D)``: L2-normalise each of the T prompt embeddings of a class, take their
    mean over templates, L2-normalise again (Tip-Adapter ``clip_classifier``; CLIP notebook).
    """
    if prompt_embeddings.ndim != 3:
        raise ValueError(
            f"prompt_embeddings: expected shape (C, T, D), found {tuple(prompt_embeddings.shape)}"
        )
    return l2_normalize(l2_normalize(prompt_embeddings).mean(dim=1))


def cache_keys(view_features: Tensor) -> Tensor:
    """Tip-Adapter cache keys from raw features of V augmented views.

    ``(V, N, D) → (N, D)``: mean of the **raw** features over views, then L2-normalise
    (``build_cache_model`` averages ``augment_epoch`` passes before normalising).
    """
    if view_features.ndim != 3:
        raise ValueError(
            f"view_features: expected shape (V, N, D), found {tuple(view_features.shape)}"
        )
    return l2_normalize(view_features.mean(dim=0))


def class_sum(values: Tensor, labels: Tensor, n_classes: int) -> Tensor:
    """``values @ onehot(labels)`` computed as a class-wise sum over the last dimension.

    ``values`` (..., K), ``labels`` (K,) int → (..., C) where column c sums the entries whose
    key has label c. When the keys come in equal-sized contiguous class blocks
    (``labels = [0]*S + [1]*S + …``, the usual few-shot cache order after sorting) it is a
    reshape and a sum; otherwise an ``index_add``.
    """
    k = values.shape[-1]
    if labels.shape != (k,):
        raise ValueError(f"labels: expected shape ({k},), found {tuple(labels.shape)}")
    if k and k % n_classes == 0:
        per = k // n_classes
        block = torch.arange(n_classes, device=labels.device).repeat_interleave(per)
        if torch.equal(labels, block):
            return values.reshape(*values.shape[:-1], n_classes, per).sum(-1)
    out = values.new_zeros(*values.shape[:-1], n_classes)
    return out.index_add_(-1, labels.to(values.device), values)


def tip_affinity(x: Tensor, keys: Tensor, *, beta: float) -> Tensor:
    """``exp(−β(1 − x·keysᵀ))`` for L2-normalised ``x`` (N, D) and ``keys`` (K, D) → (N, K)."""
    return torch.exp((x @ keys.T - 1.0) * beta)


def tip_cache_logits(
    x: Tensor, keys: Tensor, labels: Tensor, n_classes: int, *, beta: float
) -> Tensor:
    """Cache term of Tip-Adapter without α: ``exp(−β(1 − x·keysᵀ))·onehot(labels)`` → (N, C)."""
    return class_sum(tip_affinity(x, keys, beta=beta), labels, n_classes)


def tip_logits(
    x: Tensor,
    keys: Tensor,
    labels: Tensor,
    text_weights: Tensor,
    *,
    alpha: float,
    beta: float,
    scale: float = 100.0,
) -> Tensor:
    """Tip-Adapter logits.

    ``scale·x·Wᵀ + α·exp(−β(1 − x·keysᵀ))·onehot(labels)`` with x (N, D) L2-normalised, keys
    (K, D), labels (K,) int class ids and W = ``text_weights`` (C, D) → (N, C). ``scale`` is the
    constant 100 of the reference code (paper Eq. 4 omits it).
    """
    zs = scale * (x @ text_weights.T)
    if alpha == 0:
        return zs
    return zs + alpha * tip_cache_logits(x, keys, labels, text_weights.shape[0], beta=beta)


def reference_grid(search_scale: float, search_step: int) -> list[float]:
    """One axis of the reference grid: ``0.1 + i·(S − 0.1)/n`` for ``i = 0 … n−1`` (end excluded).

    Computed in Python floats exactly as the reference's list comprehension, so the values agree
    bit for bit with ``search_hp``.
    """
    if search_step < 1:
        raise ValueError(f"search_step: expected a positive integer, found {search_step}")
    return [i * (search_scale - 0.1) / search_step + 0.1 for i in range(search_step)]


def first_best(scores: Tensor) -> tuple[int, ...]:
    """Index of the first maximum in row-major order (the reference's strict ``>`` rule).

    The reference loops with the first axis outermost and keeps a new point only when it is
    strictly better, so among equal scores the one visited first wins. ``torch.argmax`` on the
    flattened tensor returns the first maximal index, which is the same point.
    """
    flat = int(torch.argmax(scores.reshape(-1)))
    return tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), scores.shape))


def count_correct_over_alpha(base: Tensor, extra: Tensor, labels: Tensor, alphas: Tensor) -> Tensor:
    """How many rows are classified correctly by ``argmax(base + α·extra)``, for every α at once.

    ``base`` (N, C), ``extra`` (..., N, C) with any leading batch dimensions (e.g. one per β),
    ``labels`` (N,), ``alphas`` (A,) → int64 counts (..., A).

    Exact and O(N·C) instead of O(A·N·C): row i is correct iff for every other class c,
    ``(base_y − base_c) + α·(extra_y − extra_c) > 0``. Each constraint bounds α from one side
    (below where the slope is positive, above where it is negative), so the α that classify the
    row correctly form an open interval (lo, hi), and a row counts for every grid α inside it.
    A row whose true class ties another class's score is counted as wrong (a tie cannot be
    resolved in favour of the label reliably; it has measure zero in practice).
    """
    batch = extra.shape[:-2]
    if base.shape[0] == 0:
        return torch.zeros(*batch, alphas.shape[0], dtype=torch.long, device=base.device)
    idx = labels.unsqueeze(1)
    db = base.gather(1, idx) - base  # margin of the true class at α = 0
    de = extra.gather(-1, idx.expand(*batch, -1, 1)) - extra  # slope of that margin in α
    q = (db / de).neg_()  # the α where the margin crosses zero
    # de = 0: q = −inf if the margin is positive (no constraint), +inf if negative, NaN on a tie
    q = torch.nan_to_num_(q, nan=float("inf"), posinf=float("inf"), neginf=float("-inf"))
    q.scatter_(-1, idx.expand(*q.shape[:-1], 1), float("-inf"))  # the true class: no constraint
    upper = de < 0
    lo = q.masked_fill(upper, float("-inf")).amax(dim=-1, keepdim=True)
    hi = q.masked_fill_(~upper, float("inf")).amin(dim=-1, keepdim=True)
    a = alphas.to(base.dtype)
    return ((a > lo) & (a < hi)).sum(dim=-2)


def _class_summer(labels: Tensor, n_classes: int) -> Callable[[Tensor], Tensor]:
    """``class_sum`` with the label layout inspected once, for use inside hot loops."""
    k = labels.shape[0]
    if k and k % n_classes == 0:
        per = k // n_classes
        block = torch.arange(n_classes, device=labels.device).repeat_interleave(per)
        if torch.equal(labels, block):
            return lambda v: v.reshape(*v.shape[:-1], n_classes, per).sum(-1)
    return lambda v: class_sum(v, labels, n_classes)


_BLOCK_BYTES = 2 * 2**20  # one block of exp(β(A − 1)) rows; fits a core's cache


def _chunk_rows(n_keys: int, itemsize: int, budget_bytes: int) -> int:
    """Rows per chunk so that one (rows, n_keys) temporary stays within ``budget_bytes``."""
    return max(1, budget_bytes // max(1, n_keys * itemsize))


def tip_grid_counts(
    x_val: Tensor,
    y_val: Tensor,
    keys: Tensor,
    labels: Tensor,
    text_weights: Tensor,
    betas: Sequence[float],
    alphas: Sequence[float],
    *,
    scale: float = 100.0,
    chunk_bytes: int = 256 * 2**20,
) -> Tensor:
    """Number of correctly classified validation rows at every (β, α) of a grid → (nβ, nα) int64.

    The affinity ``x_val·keysᵀ`` is computed once per chunk of validation rows (each chunk's
    temporaries stay within ``chunk_bytes``), ``exp(−β(1 − A))`` once per β over cache-sized
    blocks of rows, the one-hot product as a class-wise sum over keys, and all α at once
    through ``count_correct_over_alpha``. ``x_val`` must be L2-normalised; dtype and device are
    kept.
    """
    n, c = x_val.shape[0], text_weights.shape[0]
    alpha_t = torch.tensor(list(alphas), dtype=x_val.dtype, device=x_val.device)
    beta_t = torch.tensor(list(betas), dtype=x_val.dtype, device=x_val.device)
    n_beta = len(beta_t)
    counts = torch.zeros(n_beta, len(alpha_t), dtype=torch.long, device=x_val.device)
    sum_by_class = _class_summer(labels, c)
    itemsize = x_val.element_size()
    outer = _chunk_rows(keys.shape[0], itemsize, chunk_bytes)
    inner = _chunk_rows(keys.shape[0], itemsize, _BLOCK_BYTES)
    group = max(1, min(n_beta, _BLOCK_BYTES // max(1, min(inner, n) * c * itemsize)))
    for start in range(0, n, outer):
        xs, ys = x_val[start : start + outer], y_val[start : start + outer]
        zs = scale * (xs @ text_weights.T)
        shifted = xs @ keys.T - 1.0  # A − 1, reused for every β
        buf = torch.empty(min(inner, len(xs)), keys.shape[0], dtype=xs.dtype, device=xs.device)
        cache = torch.empty(group, min(inner, len(xs)), c, dtype=xs.dtype, device=xs.device)
        # β innermost over a cache-sized block of rows, so exp(β(A − 1)) and its class sums stay
        # in cache; the α counts run on a group of β at once.
        for b0 in range(0, len(xs), inner):
            sb, zb, yb = shifted[b0 : b0 + inner], zs[b0 : b0 + inner], ys[b0 : b0 + inner]
            eb = buf[: len(sb)]
            for g0 in range(0, n_beta, group):
                gb = cache[: min(group, n_beta - g0), : len(sb)]
                for j in range(gb.shape[0]):
                    torch.mul(sb, beta_t[g0 + j], out=eb).exp_()
                    gb[j] = sum_by_class(eb)
                counts[g0 : g0 + gb.shape[0]] += count_correct_over_alpha(zb, gb, yb, alpha_t)
    return counts


def search_tip(
    x_val: Tensor,
    y_val: Tensor,
    keys: Tensor,
    labels: Tensor,
    text_weights: Tensor,
    *,
    search_scale: Sequence[float] = (7, 3),
    search_step: Sequence[int] = (200, 20),
    scale: float = 100.0,
    chunk_bytes: int = 256 * 2**20,
) -> tuple[float, float, float]:
    """Tip-Adapter's (β, α) grid search, selecting exactly the point the reference loop selects.

    Grid: ``β_i = 0.1 + i·(S_β − 0.1)/n_β`` and ``α_j`` likewise (``reference_grid``); β is the
    outer loop, α the inner one, and strict ``>`` keeps the first best point. Returns
    ``(beta, alpha, accuracy)`` with accuracy in percent on ``(x_val, y_val)``. The counts come
    from ``tip_grid_counts`` (affinity once, exp once per β, all α at once). Where no grid point
    classifies any row correctly the reference returns (0, 0); this returns the first point.
    """
    if len(search_scale) != 2 or len(search_step) != 2:
        raise ValueError(
            "search_scale and search_step: expected two entries each (beta, alpha), found "
            f"{tuple(search_scale)} and {tuple(search_step)}"
        )
    if x_val.shape[0] == 0:
        raise ValueError("x_val: expected at least one validation row, found 0")
    betas = reference_grid(float(search_scale[0]), int(search_step[0]))
    alphas = reference_grid(float(search_scale[1]), int(search_step[1]))
    counts = tip_grid_counts(
        x_val,
        y_val,
        keys,
        labels,
        text_weights,
        betas,
        alphas,
        scale=scale,
        chunk_bytes=chunk_bytes,
    )
    bi, ai = first_best(counts)
    return betas[bi], alphas[ai], 100.0 * int(counts[bi, ai]) / x_val.shape[0]
