"""The math every method shares, as plain functions on torch tensors.

This module is a stable public contract: reproduction tests depend on it. Every function keeps
the dtype and device of its inputs (float64 in gives float64 math) and never moves data between
devices.

Notation: N queries, K cache entries (keys), C classes, D feature dimension, V augmented views.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch
from torch import Tensor

from fewclip.errors import InvalidValueError

__all__ = [
    "affinity_from_similarity_",
    "cache_grid_counts",
    "cache_keys",
    "chunk_rows",
    "class_sum",
    "count_correct",
    "count_correct_over_alpha",
    "first_best",
    "kernel_matmul",
    "l2_normalize",
    "pow2_rescale_rows",
    "psd_cholesky",
    "reference_grid",
    "search_tip",
    "text_classifier",
    "tip_affinity",
    "tip_cache_logits",
    "tip_grid_counts",
    "tip_logits",
]


def l2_normalize(x: Tensor, dim: int = -1) -> Tensor:
    """``x / ‖x‖₂`` along ``dim`` (as CLIP's ``x / x.norm(dim=-1, keepdim=True)``, bit for bit),
    except that a zero vector stays zero instead of becoming NaN (the norm is clamped to the
    smallest normal number of the dtype)."""
    return x / x.norm(dim=dim, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)


def pow2_rescale_rows(x: Tensor) -> Tensor:
    """Each row of ``x`` multiplied by the power of two that brings its largest ``|entry|``
    into [0.5, 1); zero rows are left as they are.

    Multiplying by a power of two is exact, so ``x/‖x‖`` and every positively homogeneous score
    of a row are unchanged bit for bit, while a row of 1e30s or 1e-30s no longer overflows or
    underflows when its norm is taken (or when it is cast to a half-precision dtype).
    """
    if x.numel() == 0:
        return x
    _, exponent = torch.frexp(x.abs().amax(dim=-1, keepdim=True))
    if x.dtype == torch.float32 and not torch.jit.is_tracing() and int(exponent.min()) > -126:
        # the numbers ldexp gives (x·2^−e, exact), about 10× faster on a CPU; ldexp handles the
        # rows of subnormal numbers, whose factor 2^−e is beyond float32's range (and traced
        # graphs, which would freeze this data-dependent choice)
        return x * torch.pow(2.0, -exponent)
    return torch.ldexp(x, -exponent)


def text_classifier(prompt_embeddings: Tensor) -> Tensor:
    """Zero-shot text classifier from raw prompt embeddings.

    ``(C, T, D) → (C, D)``: L2-normalise each of the T prompt embeddings of a class, take their
    mean over templates, L2-normalise again (Tip-Adapter ``clip_classifier``; CLIP notebook).
    """
    if prompt_embeddings.ndim != 3:
        raise InvalidValueError(
            f"prompt_embeddings: expected shape (C, T, D), found {tuple(prompt_embeddings.shape)}"
        )
    return l2_normalize(l2_normalize(prompt_embeddings).mean(dim=1))


def cache_keys(view_features: Tensor) -> Tensor:
    """Tip-Adapter cache keys from raw features of V augmented views.

    ``(V, N, D) → (N, D)``: mean of the **raw** features over views, then L2-normalise
    (``build_cache_model`` averages ``augment_epoch`` passes before normalising).
    """
    if view_features.ndim != 3:
        raise InvalidValueError(
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
        raise InvalidValueError(f"labels: expected shape ({k},), found {tuple(labels.shape)}")
    if k and k % n_classes == 0:
        per = k // n_classes
        block = torch.arange(n_classes, device=labels.device).repeat_interleave(per)
        if torch.equal(labels, block):
            return values.reshape(*values.shape[:-1], n_classes, per).sum(-1)
    if torch.jit.is_tracing():
        # an exported graph (fewclip.export) would freeze index_add_'s batch size: the
        # definition itself, a product with the one-hot matrix, traces with a free batch
        onehot = torch.nn.functional.one_hot(labels.to(values.device), n_classes)
        return values @ onehot.to(values.dtype)
    out = values.new_zeros(*values.shape[:-1], n_classes)
    return out.index_add_(-1, labels.to(values.device), values)


def tip_affinity(x: Tensor, keys: Tensor, *, beta: float) -> Tensor:
    """``exp(−β(1 − x·keysᵀ))`` for L2-normalised ``x`` (N, D) and ``keys`` (K, D) → (N, K)."""
    return affinity_from_similarity_(x @ keys.T, beta)


def affinity_from_similarity_(sim: Tensor, beta: float) -> Tensor:
    """``exp(β·(sim − 1))``, written over ``sim`` when no gradient flows through it.

    The same operations in the same order as ``torch.exp((sim − 1)·β)`` (bit-identical), but
    without three fresh (N, K) temporaries: at ImageNet scale the cache affinity of a 4,096-row
    block is 262 MB, and allocating and streaming those copies cost about as much as the matmul.
    With autograd the out-of-place form is used. Returns the affinity (``sim`` itself, in place).
    """
    if sim.requires_grad:
        return torch.exp((sim - 1.0) * beta)
    return sim.sub_(1.0).mul_(beta).exp_()


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
        raise InvalidValueError(f"search_step: expected a positive integer, found {search_step}")
    return [i * (search_scale - 0.1) / search_step + 0.1 for i in range(search_step)]


def first_best(scores: Tensor) -> tuple[int, ...]:
    """Index of the first maximum in row-major order (the reference's strict ``>`` rule).

    The reference loops with the first axis outermost and keeps a new point only when it is
    strictly better, so among equal scores the one visited first wins. ``torch.argmax`` on the
    flattened tensor returns the first maximal index, which is the same point.
    """
    flat = int(torch.argmax(scores.reshape(-1)))
    return tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), scores.shape))


def count_correct(logits: Tensor, labels: Tensor) -> int:
    """How many rows of ``logits`` (N, C) have their first maximum at ``labels`` (N,).

    ``max(dim=1).indices`` is the first maximum, as ``argmax``, and several times faster on a
    CPU; an integer count compares exactly across epochs and grid points (strict ``>`` rules).
    """
    return int((logits.max(dim=1).indices == labels).sum())


def kernel_matmul(
    x: Tensor, keys: Tensor, v: Tensor, *, beta: float, chunk_bytes: int = 256 * 2**20
) -> Tensor:
    """``K(x, keys)·v`` with ``K = exp(−β(1 − x·keysᵀ))`` (:func:`tip_affinity`), without
    forming the (N, M) kernel: rows of ``x`` in chunks whose kernel block stays within
    ``chunk_bytes``.

    ``x`` (N, D) and ``keys`` (M, D) L2-normalised, ``v`` (M, C) → (N, C).
    """
    out = v.new_empty(x.shape[0], v.shape[1])
    step = chunk_rows(keys.shape[0], x.element_size(), chunk_bytes)
    for i in range(0, x.shape[0], step):
        out[i : i + step] = tip_affinity(x[i : i + step], keys, beta=beta) @ v
    return out


def psd_cholesky(h: Tensor, out: Tensor | None = None) -> Tensor:
    """Lower Cholesky factor of a positive semi-definite matrix, with a growing jitter.

    Adds ``1e-10·mean|diag|`` to the diagonal (×100 per retry, 8 tries) until the
    factorisation succeeds. ``h`` is scratch: its diagonal is overwritten. The factor goes to
    ``out`` when given. Raises ``torch.linalg.LinAlgError`` if every try fails.
    """
    base = h.diagonal().clone()
    scale = float(base.abs().mean()) or 1.0
    jitter = 1e-10 * scale
    info = torch.empty((), dtype=torch.int32)
    for _ in range(8):
        torch.add(base, jitter, out=h.diagonal())
        if out is None:
            factor, info = torch.linalg.cholesky_ex(h)
        else:
            factor, info = torch.linalg.cholesky_ex(h, out=(out, info))
        if int(info) == 0:
            return factor
        jitter *= 100
    raise torch.linalg.LinAlgError("could not factorise a positive semi-definite system")


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


def chunk_rows(n_cols: int, itemsize: int, budget_bytes: int) -> int:
    """Rows per chunk so that one (rows, n_cols) temporary stays within ``budget_bytes``
    (at least one row)."""
    return max(1, budget_bytes // max(1, n_cols * itemsize))


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
    outer = chunk_rows(keys.shape[0], itemsize, chunk_bytes)
    inner = chunk_rows(keys.shape[0], itemsize, _BLOCK_BYTES)
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
    ``(beta, alpha, accuracy)`` with accuracy in percent on ``(x_val, y_val)``. For float32 and
    float64 the counts come from ``cache_grid_counts`` (pruned; about 3× faster than
    ``tip_grid_counts`` at ImageNet shape, and at ImageNet-sized near-tie grid points closer to
    the reference loop's own float32 rounding); float16/bfloat16 use ``tip_grid_counts`` in their
    own precision. Where no grid point classifies any row correctly the reference returns
    (0, 0); this returns the first point.
    """
    if len(search_scale) != 2 or len(search_step) != 2:
        raise InvalidValueError(
            "search_scale and search_step: expected two entries each (beta, alpha), found "
            f"{tuple(search_scale)} and {tuple(search_step)}"
        )
    if x_val.shape[0] == 0:
        raise InvalidValueError("x_val: expected at least one validation row, found 0")
    betas = reference_grid(float(search_scale[0]), int(search_step[0]))
    alphas = reference_grid(float(search_scale[1]), int(search_step[1]))
    if x_val.dtype in (torch.float32, torch.float64):
        base = scale * (x_val @ text_weights.T)
        counts = cache_grid_counts(
            x_val, y_val, keys, labels, base, betas, alphas, chunk_bytes=chunk_bytes
        )[:, 0, 0]
    else:  # half precision keeps its own arithmetic (cache_grid_counts would search in float32)
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


def _interval_counts(
    d_base: Tensor,
    d_cache: Tensor,
    d_extra: Tensor | None,
    labels: Tensor,
    alphas: Tensor,
    gammas: Tensor,
) -> Tensor:
    """Correct counts of ``argmax(base + α·cache_b + γ·extra)`` → int64 (nb, G, nγ, nα).

    Takes margins against the label: ``d_base = base_y − base`` (n, C), ``d_cache`` (nb, G, n, C)
    likewise for nb slices (e.g. β values) and G variants of the cache term, ``d_extra`` (n, C) or
    ``None`` (then ``gammas`` holds one value, ignored); ``labels`` (n,), ``alphas`` ≥ 0. Exact,
    with the semantics of ``count_correct_over_alpha``: a row counts where every other class's
    margin ``m_c = d_base_c + α·d_cache_c + γ·d_extra_c`` is strictly positive.

    Pruning: over the nb slices each ``d_cache`` entry lies between its minimum and maximum, and
    each margin is affine in (α, γ), so its sign over the grid's bounding box is bounded at the
    box's corners. A class whose margin is positive at every corner even at the slice minimum
    constrains nothing; one whose margin is ≤ 0 at every corner even at the slice maximum makes
    the row wrong everywhere. Only the remaining (row, class) pairs, usually few, are turned into
    exact bounds on α for every (slice, γ).
    """
    nb, n_var, n, _ = d_cache.shape
    n_alpha, n_gamma = alphas.shape[0], gammas.shape[0]
    counts = torch.zeros(nb, n_var, n_gamma, n_alpha, dtype=torch.long, device=d_cache.device)
    if n == 0:
        return counts
    low = d_cache.amin(dim=0) if nb > 1 else d_cache[0]  # (G, n, C)
    high = d_cache.amax(dim=0) if nb > 1 else d_cache[0]
    step = n_gamma if d_extra is None else _GAMMA_CHUNK
    for g0 in range(0, n_gamma, step):
        counts[:, :, g0 : g0 + step] = _interval_counts_box(
            d_base, d_cache, d_extra, labels, alphas, gammas[g0 : g0 + step], low, high
        )
    return counts


def _interval_counts_box(
    d_base: Tensor,
    d_cache: Tensor,
    d_extra: Tensor | None,
    labels: Tensor,
    alphas: Tensor,
    gammas: Tensor,
    low: Tensor,
    high: Tensor,
) -> Tensor:
    """``_interval_counts`` over one box of the grid (all α, the given γ) → (nb, G, nγ, nα)."""
    nb, n_var, n, c = d_cache.shape
    n_alpha, n_gamma = alphas.shape[0], gammas.shape[0]
    dev, dtype = d_cache.device, d_cache.dtype
    counts = torch.zeros(nb, n_var, n_gamma, n_alpha, dtype=torch.long, device=dev)
    a_corners = sorted({float(alphas.min()), float(alphas.max())})
    g_corners = [0.0] if d_extra is None else sorted({float(gammas.min()), float(gammas.max())})
    maybe = torch.zeros(n_var, n, c, dtype=torch.bool, device=dev)
    sure = torch.ones(n_var, n, c, dtype=torch.bool, device=dev)
    for g in g_corners:
        m0 = d_base if d_extra is None or g == 0.0 else d_base + g * d_extra
        for a in a_corners:
            maybe |= torch.add(m0, low, alpha=a) <= 0
            sure &= torch.add(m0, high, alpha=a) <= 0
    idx = labels.view(1, n, 1).expand(n_var, n, 1)
    maybe.scatter_(-1, idx, False)
    sure.scatter_(-1, idx, False)
    dominated = sure.any(dim=-1)  # (G, n): some class wins everywhere, the row is never correct
    free = ~maybe.any(dim=-1)  # (G, n): no class ever reaches the label, always correct
    counts += free.sum(dim=-1).view(1, n_var, 1, 1)
    maybe &= ~dominated.unsqueeze(-1)
    pairs = maybe.nonzero()
    if pairs.shape[0] == 0:
        return counts
    gi, ri, ci = pairs.unbind(1)
    margin0 = d_base[ri, ci].unsqueeze(1).expand(-1, n_gamma)  # (P, nγ)
    if d_extra is not None:
        margin0 = margin0 + gammas.unsqueeze(0) * d_extra[ri, ci].unsqueeze(1)
    slope = d_cache[:, gi, ri, ci].unsqueeze(-1)  # (nb, P, 1)
    bound = -margin0 / torch.where(slope == 0, torch.ones_like(slope), slope)
    inf = torch.tensor(float("inf"), dtype=dtype, device=dev)
    flat_lo = torch.where(slope > 0, bound, torch.where(margin0 > 0, -inf, inf))
    flat_hi = torch.where(slope < 0, bound, inf)
    rows, inverse = torch.unique(gi * n + ri, return_inverse=True)
    where = inverse.view(1, -1, 1).expand(nb, -1, n_gamma)
    lo = torch.full((nb, rows.shape[0], n_gamma), float("-inf"), dtype=dtype, device=dev)
    hi = torch.full_like(lo, float("inf"))
    lo.scatter_reduce_(1, where, flat_lo, "amax")
    hi.scatter_reduce_(1, where, flat_hi, "amin")
    grid = alphas.view(1, 1, 1, n_alpha)
    inside = ((grid > lo.unsqueeze(-1)) & (grid < hi.unsqueeze(-1))).long()  # (nb, R, nγ, nα)
    counts.index_add_(1, rows // n, inside)
    return counts


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run the enclosed torch ops on one intra-op thread (restored afterwards)."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _arithmetic_step(values: Sequence[float]) -> float | None:
    """The common difference of an increasing arithmetic sequence (≥ 3 values), else ``None``."""
    if len(values) < 3:
        return None
    step = (values[-1] - values[0]) / (len(values) - 1)
    if step <= 0:
        return None
    tol = 1e-9 * max(abs(values[0]), abs(values[-1]), 1.0)
    if all(abs(v - (values[0] + i * step)) <= tol for i, v in enumerate(values)):
        return step
    return None


_REANCHOR = 16  # exact exp every this many β steps; multiplications in between
_BETA_GROUP = 16  # β values whose caches are bounded together when pruning classes
_GRID_BLOCK_BYTES = 512 * 2**10  # one row block of exp(β(A − 1)); it and its ratio stay in L2
_COUNT_BYTES = 32 * 2**20  # margins of one β group for the rows counted together
_GAMMA_CHUNK = 5  # γ values whose box is pruned together (the KL term of TIP-X varies a lot)


def cache_grid_counts(
    x_val: Tensor,
    y_val: Tensor,
    keys: Tensor,
    labels: Tensor,
    base: Tensor,
    betas: Sequence[float],
    alphas: Sequence[float],
    *,
    key_weights: Tensor | None = None,
    extra: Tensor | None = None,
    gammas: Sequence[float] = (0.0,),
    affinity: Tensor | None = None,
    chunk_bytes: int = 256 * 2**20,
) -> Tensor:
    """Correct counts over a grid of Tip-style cache classifiers → int64 (nβ, G, nγ, nα).

    For every β in ``betas``, value-weight variant g (rows of ``key_weights``), γ in ``gammas``
    and α in ``alphas``, counts the validation rows classified correctly by

        argmax( base + α·Σ_j exp(−β(1 − x·k_jᵀ))·w_gj·onehot(y_j) + γ·extra )

    with ``x_val`` (N, D) and ``keys`` (K, D) (L2-normalised in the cache methods),
    ``labels`` (K,) the keys' classes, ``base`` (N, C) (e.g. ``100·x·Wᵀ``), ``key_weights``
    (G, K) per-key value weights (``None``: all ones, G = 1; APE's zero-shot re-weighting
    ``exp(γ·KL_j)`` gives one row per γ), ``extra`` (N, C) an additional logit term weighted by
    γ (TIP-X's KL term; ``None``: ``gammas`` must be a single value and is ignored).
    ``affinity`` may pass a precomputed ``x_val·keysᵀ`` (N, K) instead of recomputing it.

    Exact counting with the semantics of ``count_correct_over_alpha`` (ties count as wrong),
    organised for speed: keys are laid out shot-major with zero-weight padding so that the
    class-wise sum is a sum over a middle axis; the affinity is computed once per chunk of rows
    (temporaries within ``chunk_bytes``); ``exp(β(A − 1))`` is evaluated in cache-sized row
    blocks, and on an arithmetic β grid by multiplying by ``exp(Δβ·(A − 1))`` with an exact
    re-evaluation every 16 steps; α (and γ) are handled for all grid values at once by
    ``_interval_counts``. Float16/bfloat16 inputs are searched in float32; float64 stays.
    """
    if not betas or not alphas or not gammas:
        raise InvalidValueError("betas, alphas and gammas: expected at least one value each")
    if min(betas) <= 0:
        raise InvalidValueError(f"betas: expected positive values, found minimum {min(betas)}")
    if min(alphas) < 0:
        raise InvalidValueError(
            f"alphas: expected non-negative values, found minimum {min(alphas)}"
        )
    if extra is None and len(gammas) != 1:
        raise InvalidValueError(
            f"gammas: expected a single value without `extra`, found {len(gammas)}"
        )
    n, c = base.shape
    k = keys.shape[0]
    if labels.shape != (k,):
        raise InvalidValueError(f"labels: expected shape ({k},), found {tuple(labels.shape)}")
    if x_val.shape[0] != n or y_val.shape != (n,):
        raise InvalidValueError(
            f"x_val/y_val: expected {n} rows (as base), found {tuple(x_val.shape)} and "
            f"{tuple(y_val.shape)}"
        )
    if key_weights is not None and (key_weights.ndim != 2 or key_weights.shape[1] != k):
        raise InvalidValueError(
            f"key_weights: expected shape (G, {k}), found {tuple(key_weights.shape)}"
        )
    if extra is not None and extra.shape != (n, c):
        raise InvalidValueError(f"extra: expected shape ({n}, {c}), found {tuple(extra.shape)}")
    dtype = torch.float64 if x_val.dtype == torch.float64 else torch.float32
    dev = x_val.device
    n_weights = 1 if key_weights is None else key_weights.shape[0]
    n_beta, n_alpha, n_gamma = len(betas), len(alphas), len(gammas)
    counts = torch.zeros(n_beta, n_weights, n_gamma, n_alpha, dtype=torch.long, device=dev)
    if n == 0:
        return counts

    # shot-major layout: column s·C + c holds the s-th key of class c (padding where a class has
    # fewer keys); padded columns get affinity −inf, so exp(β(A − 1)) = 0 there.
    labels = labels.to(dev)
    per_class = torch.bincount(labels, minlength=c)
    shots = int(per_class.max()) if k else 0
    order = torch.argsort(labels, stable=True)
    starts = torch.cumsum(per_class, 0) - per_class
    slot = torch.arange(k, device=dev) - starts[labels[order]]
    table = torch.full((shots, c), -1, dtype=torch.long, device=dev)
    table[slot, labels[order]] = order
    flat = table.reshape(-1)
    pad = flat < 0
    src = flat.clamp(min=0)
    weights = None
    if key_weights is not None:
        weights = key_weights.to(device=dev, dtype=dtype)[:, src].masked_fill(pad, 0.0)
        weights = weights.view(n_weights, shots, c)
    keys_sm = keys.to(dtype)[src] if affinity is None else None

    base = base.to(dtype)
    extra = None if extra is None else extra.to(dtype)
    y_val = y_val.to(dev).long()
    alpha_t = torch.tensor(list(alphas), dtype=dtype, device=dev)
    gamma_t = torch.tensor(list(gammas), dtype=dtype, device=dev)
    step = _arithmetic_step(list(betas))
    # keep exp(β(A − 1)) in the normal range (no denormals): only values below e^−80 change
    floor = -(80.0 if dtype == torch.float32 else 700.0) / max(betas)

    itemsize = torch.finfo(dtype).bits // 8
    width = max(1, shots * c)
    outer = chunk_rows(width, itemsize, chunk_bytes)
    inner = chunk_rows(width, itemsize, _GRID_BLOCK_BYTES)
    group = max(1, min(n_beta, _BETA_GROUP))
    # rows whose margins are counted together: large enough to amortise per-call overheads
    together = max(inner, _COUNT_BYTES // max(1, group * n_weights * c * itemsize))
    together = min(n, together - together % inner)
    workers = _grid_workers(n, inner)
    if workers > 1:  # row groups of about n / workers rows, so every thread gets work
        together = min(together, inner * math.ceil(math.ceil(n / workers) / inner))
    for start in range(0, n, outer):
        stop = min(n, start + outer)
        if affinity is None:
            assert keys_sm is not None
            shifted = x_val[start:stop].to(dtype) @ keys_sm.T
        else:
            shifted = affinity[start:stop].to(dtype)[:, src]
        shifted.sub_(1.0).clamp_(min=floor).masked_fill_(pad, float("-inf"))

        def count_rows(c0: int, shifted: Tensor = shifted, start: int = start) -> Tensor:
            c1 = min(n, start + shifted.shape[0], c0 + together)
            return _grid_rows_counts(
                shifted[c0 - start : c1 - start],
                base[c0:c1],
                None if extra is None else extra[c0:c1],
                y_val[c0:c1],
                betas,
                step,
                weights,
                alpha_t,
                gamma_t,
                inner=inner,
                group=group,
            )

        groups = range(start, stop, together)
        for part in _map_one_thread_each(count_rows, groups, workers):
            counts += part
    return counts


def _grid_workers(n_rows: int, block_rows: int) -> int:
    """Threads for the counting stage: torch's intra-op threads, at most one per row block."""
    return max(1, min(torch.get_num_threads(), math.ceil(n_rows / max(1, block_rows))))


def _map_one_thread_each(
    fn: Callable[[int], Tensor], items: Sequence[int], workers: int
) -> Iterator[Tensor]:
    """``map(fn, items)`` with every call's torch ops on one intra-op thread.

    The counting stage is many small cache-resident ops, where intra-op threads only add
    synchronisation; instead, independent row groups run in ``workers`` Python threads (torch
    releases the GIL inside each op). The caller's thread count is restored.
    """
    if workers <= 1 or len(items) <= 1:
        with _one_thread():
            yield from map(fn, items)
        return

    def run(item: int) -> Tensor:
        torch.set_num_threads(1)  # per thread under OpenMP (and MKL); pool threads are private
        return fn(item)

    threads = torch.get_num_threads()
    try:
        with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
            yield from pool.map(run, items)
    finally:  # set_num_threads also records the count new threads start with: restore it
        torch.set_num_threads(threads)


def _grid_rows_counts(
    shifted: Tensor,
    base: Tensor,
    extra: Tensor | None,
    y: Tensor,
    betas: Sequence[float],
    step: float | None,
    weights: Tensor | None,
    alpha_t: Tensor,
    gamma_t: Tensor,
    *,
    inner: int,
    group: int,
) -> Tensor:
    """``cache_grid_counts`` for one group of rows, from their ``A − 1`` in shot-major layout."""
    rows, c = base.shape
    n_beta = len(betas)
    n_weights = 1 if weights is None else weights.shape[0]
    shots = shifted.shape[1] // max(1, c)
    dtype, dev = shifted.dtype, shifted.device
    counts = torch.zeros(
        n_beta, n_weights, gamma_t.shape[0], alpha_t.shape[0], dtype=torch.long, device=dev
    )
    y_col = y.view(rows, 1)
    d_base = base.gather(1, y_col) - base
    d_extra = None if extra is None else extra.gather(1, y_col) - extra
    y_idx = y.view(1, 1, rows, 1).expand(-1, n_weights, rows, 1)
    # exp(β(A − 1)) state of every cache-sized block of these rows, kept across β groups
    blocks = []
    for r0 in range(0, rows, inner):
        sb = shifted[r0 : r0 + inner]
        ratio = torch.exp(sb * step) if step is not None else None
        blocks.append((r0, sb, torch.empty_like(sb), ratio))
    buf = torch.empty(group, rows, n_weights, c, dtype=dtype, device=dev)
    tmp = None
    if weights is not None:
        tmp = torch.empty(inner, n_weights, shots, c, dtype=dtype, device=dev)
    for g0 in range(0, n_beta, group):
        g1 = min(n_beta, g0 + group)
        for r0, sb, e, ratio in blocks:
            r = sb.shape[0]
            for j in range(g0, g1):
                if ratio is not None and j % _REANCHOR != 0:
                    e.mul_(ratio)
                else:
                    torch.mul(sb, betas[j], out=e).exp_()
                e4 = e.view(r, 1, shots, c)
                if weights is not None:
                    assert tmp is not None
                    e4 = torch.mul(e4, weights, out=tmp[:r])
                torch.sum(e4, dim=2, out=buf[j - g0, r0 : r0 + r])
        cache = buf[: g1 - g0].transpose(1, 2)  # (group, G, rows, C)
        d_cache = (cache.gather(3, y_idx.expand(g1 - g0, -1, -1, -1)) - cache).contiguous()
        counts[g0:g1] += _interval_counts(d_base, d_cache, d_extra, y, alpha_t, gamma_t)
    return counts
