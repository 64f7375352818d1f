"""The work each feature-level method cannot avoid, and how long that work takes on this machine.

One function per registered method (``FLOORS``) derives, from the method's definition and its
reference schedule, the matrix products, factorisations and elementwise passes that any
implementation of it has to do at a given shape: the fit (statistics, searches, every training
step) and the test scoring. ``benchmarks/method_speed.py`` compares each method's measured time
with the time of that work on the same machine, measured in the same run:

- **FLOP floor**: the products' FLOPs (2·m·k·n each; M³/3 for a Cholesky factorisation of M
  rows, M²·C for a triangular solve with C right-hand sides) at the best float32 (or float64)
  GEMM throughput measured in the run, plus the elementwise passes at the measured throughput
  of an in-cache elementwise multiply (one element-operation per element of every array a pass
  must read or write once: an exponential, a class-wise sum; an optimiser update counts as 3
  passes over its parameters for SGD with momentum, 4 for Adam and AdamW).
- **shape floor**: the same products, each timed on its own at its real shape in a tight loop
  of bare ``torch.mm`` calls into preallocated outputs (so the per-call latency of small
  products is in), times how often the method needs it, plus the same factorisation and
  elementwise terms, with each optimiser update timed instead as torch's fused kernel
  (``torch.optim.SGD/Adam/AdamW(fused=True)``, one pass) over as many parameters: an update
  streams parameters that do not fit a cache (CLIP-Adapter's 524,288), which the in-cache
  elementwise rate would underestimate. For a schedule of many small steps (CLIP-Adapter's
  10,000 steps of 32 rows, the cross-modal probe's 12,800 steps of 32 rows) this is the
  latency floor: the same number of bare matmul-and-backward steps of that size and of bare
  updates, with nothing around them.

A method's floor is the larger of the two. What is counted is a lower bound: a product over a
symmetric result is counted in full (torch has no rank-k update), the work that a
data-dependent iteration does is counted for the iterations the fit actually ran (L-BFGS
evaluations), and everything a method adds around that work (input checks, Python, autograd,
temporaries, optimiser bookkeeping) is what the ratio time / floor measures.

Symbols: C classes, N support images, V stored views, D feature dimension, Nv validation rows,
Nt test rows, B batch rows, E epochs.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["FLOORS", "Rates", "Shape", "Work", "shape_of"]


@dataclass(frozen=True)
class Shape:
    """The sizes a floor depends on (``shape_of(task, test)``)."""

    c: int  # classes
    n: int  # support images
    v: int  # stored views per image
    d: int  # feature dimension
    nv: int  # validation rows (0 without validation)
    nt: int  # test rows


def shape_of(task: Any, n_test: int) -> Shape:
    s = task.support
    return Shape(
        c=task.n_classes,
        n=s.n,
        v=s.n_views if s.views is not None else 1,
        d=task.dim,
        nv=0 if task.val is None else task.val.n,
        nt=n_test,
    )


@dataclass
class Work:
    """Products ``gemm[(m, k, n, dtype)] = count`` ((m, k)·(k, n), 2·m·k·n FLOPs each),
    factorisation and triangular-solve FLOPs by dtype, elementwise operations, optimiser
    steps (for the note)."""

    gemm: Counter = field(default_factory=Counter)
    solve: Counter = field(default_factory=Counter)
    elem: float = 0.0
    steps: int = 0
    #: optimiser updates ``(kind, parameters) → count`` (kind "sgd", "adam" or "adamw")
    updates: Counter = field(default_factory=Counter)

    def __add__(self, other: Work) -> Work:
        return Work(
            self.gemm + other.gemm,
            self.solve + other.solve,
            self.elem + other.elem,
            self.steps + other.steps,
            self.updates + other.updates,
        )

    def __mul__(self, times: int) -> Work:
        if times <= 0:
            return Work()
        return Work(
            Counter({k: v * times for k, v in self.gemm.items()}),
            Counter({k: v * times for k, v in self.solve.items()}),
            self.elem * times,
            self.steps * times,
            Counter({k: v * times for k, v in self.updates.items()}),
        )

    __rmul__ = __mul__

    def flops(self) -> float:
        mm = sum(2.0 * m * k * n * count for (m, k, n, _), count in self.gemm.items())
        return mm + sum(self.solve.values())


def mm(m: int, k: int, n: int, times: int = 1, dtype: str = "float32") -> Work:
    """``times`` products (m, k)·(k, n)."""
    if min(m, k, n, times) <= 0:
        return Work()
    return Work(gemm=Counter({(m, k, n, dtype): times}))


def ew(count: float) -> Work:
    """``count`` elementwise operations."""
    return Work(elem=float(count))


def cholesky(size: int, rhs: int, dtype: str = "float32") -> Work:
    """Factorise a (size, size) matrix (size³/3) and solve for ``rhs`` columns with its two
    triangular factors (2·size²·rhs)."""
    return Work(solve=Counter({dtype: size**3 / 3 + 2.0 * size * size * rhs}))


def steps(count: int) -> Work:
    return Work(steps=count)


#: Arrays an update reads or writes per parameter: SGD with momentum (parameter, gradient,
#: buffer), Adam and AdamW (parameter, gradient, two moments).
UPDATE_PASSES = {"sgd": 3, "adam": 4, "adamw": 4}


def update(kind: str, params: int) -> Work:
    """One optimiser step over ``params`` parameters: ``UPDATE_PASSES[kind]`` elementwise passes
    in the FLOP floor; in the shape floor, the time of torch's fused kernel for that many
    parameters (the update has to stream them whether or not they fit a cache)."""
    return Work(updates=Counter({(kind, params): 1}))


def _predict_queries(s: Shape) -> Work:
    """The test rows, L2-normalised (one norm pass, one division pass)."""
    return ew(2 * s.nt * s.d)


def _cache_keys(s: Shape) -> Work:
    """Tip-Adapter's keys: the mean of the V raw views (V passes over N·D), normalised (2)."""
    return ew((s.v + 2) * s.n * s.d)


def _grid_passes(passes: int, betas: int, rows: int, keys: int) -> Work:
    """A (β, ...) grid over a cache: ``passes`` elementwise passes over the (rows, keys)
    affinity per β (the exponential, or its multiplicative update on an arithmetic grid, and
    the class-wise sum)."""
    return ew(passes * betas * rows * keys)


# -- the methods ------------------------------------------------------------------------------
def floor_zero_shot(m: Any, s: Shape, seen: dict) -> tuple[Work, Work]:
    """Zero-shot: the text weights normalised (2·C·D); scoring is ``100·x·Tᵀ``: one
    (Nt, D)·(D, C) product."""
    return ew(2 * s.c * s.d), _predict_queries(s) + mm(s.nt, s.d, s.c)


def floor_tip_adapter(m: Any, s: Shape, seen: dict) -> tuple[Work, Work]:
    """Tip-Adapter.

    Fit: the cache keys (mean of the V views, normalised); the search needs the validation
    affinity ``x_v·keysᵀ`` (Nv, D)·(D, N) and the text logits (Nv, D)·(D, C) once, then for
    each of the nβ β two passes over the (Nv, N) affinity (its exponential and the class-wise
    sum); the α values only rescale the C class sums (Nv·C per β).
    Scoring: (Nt, D)·(D, C) and (Nt, D)·(D, N), the exponential and class sum of the (Nt, N)
    affinity.
    """
    fit = _cache_keys(s) + _tip_search(m, s, keys=s.n)
    return fit, _tip_predict(s, keys=s.n)


def _tip_search(m: Any, s: Shape, *, keys: int) -> Work:
    if not getattr(m, "search", False) or s.nv == 0:
        return Work()
    n_beta = int(m.search_step[0])
    return (
        ew(2 * s.nv * s.d)
        + mm(s.nv, s.d, keys)
        + mm(s.nv, s.d, s.c)
        + _grid_passes(2, n_beta, s.nv, keys)
        + ew(n_beta * s.nv * s.c)
    )


def _tip_predict(s: Shape, *, keys: int) -> Work:
    return _predict_queries(s) + mm(s.nt, s.d, s.c) + mm(s.nt, s.d, keys) + ew(2 * s.nt * keys)


def floor_tip_adapter_f(m: Any, s: Shape, seen: dict) -> tuple[Work, Work]:
    """Tip-Adapter-F: Tip-Adapter's cache, E epochs of training, validation every epoch, then
    Tip-Adapter's search on the trained keys.

    An epoch is ⌈N/B⌉ steps over all N images, one stored view each. A step of b rows: the
    affinity (b, D)·(D, N) and the text logits (b, D)·(D, C) forward; backward, only the keys
    need a gradient: (N, b)·(b, D). Elementwise per row: normalising it (2·D), the
    exponential, class sum and their backward (4·N); per step, AdamW reads and writes the
    parameter, its gradient and two moments (4·N·D). Validation per epoch: (Nv, D)·(D, N) and
    two passes over (Nv, N); the text logits of the validation rows do not change (once).
    """
    b, e = int(m.batch_size), int(m.epochs)
    full, last = divmod(s.n, b)
    n_steps = full + (1 if last else 0)
    step_mm = mm(b, s.d, s.n, full) + mm(last, s.d, s.n)
    step_mm = step_mm + mm(b, s.d, s.c, full) + mm(last, s.d, s.c)
    back = mm(s.n, b, s.d, full) + mm(s.n, last, s.d)
    epoch = step_mm + back + ew(s.n * (2 * s.d + 4 * s.n)) + update("adamw", s.n * s.d) * n_steps
    epoch = epoch + steps(n_steps)
    val = Work()
    if s.nv:
        val = mm(s.nv, s.d, s.n) + ew(2 * s.nv * s.n)
        val = val * e + ew(2 * s.nv * s.d) + mm(s.nv, s.d, s.c)
    fit = _cache_keys(s) + epoch * e + val + _tip_search(m, s, keys=s.n)
    return fit, _tip_predict(s, keys=s.n)


def _dassl_batches(n: int, b: int) -> tuple[int, int]:
    """(steps, rows per step) of an epoch of Dassl's loader (the last partial batch dropped)."""
    return (n // b, b) if n >= b else (1, n)


def floor_clip_adapter(m: Any, s: Shape, seen: dict) -> tuple[Work, Work]:
    """CLIP-Adapter (visual branch): E epochs of N//B steps of B rows (B = 32: a latency-bound
    schedule; the shape floor is 7 bare products per step).

    Forward per step, with H = D/r: ``h = ReLU(x·W₁ᵀ)`` (B, D)·(D, H), ``a = ReLU(h·W₂ᵀ)``
    (B, H)·(H, D), logits ``u·Tᵀ`` (B, D)·(D, C). Backward: ``∂L/∂u = ∂L/∂z·T`` (B, C)·(C, D),
    ``∂L/∂W₂ = (∂L/∂a)ᵀ·h`` (D, B)·(B, H), ``∂L/∂h = ∂L/∂a·W₂`` (B, D)·(D, H),
    ``∂L/∂W₁ = (∂L/∂h)ᵀ·x`` (H, B)·(B, D). Elementwise per step: the blend, ReLUs, the
    normalisation and their backward (8·B·D), SGD with momentum and weight decay over the
    2·D·H weights (3 passes). Each epoch gathers its drawn views (N·D).
    Scoring: (Nt, D)·(D, H), (Nt, H)·(H, D), (Nt, D)·(D, C).
    """
    hidden = max(1, s.d // int(m.reduction))
    n_steps, b = _dassl_batches(s.n, int(m.batch_size))
    step = (
        mm(b, s.d, hidden)
        + mm(b, hidden, s.d)
        + mm(b, s.d, s.c)
        + mm(b, s.c, s.d)
        + mm(s.d, b, hidden)
        + mm(b, s.d, hidden)
        + mm(hidden, b, s.d)
        + ew(8 * b * s.d)
        + update("sgd", 2 * s.d * hidden)
        + steps(1)
    )
    fit = (step * n_steps + ew(s.n * s.d)) * int(m.epochs)
    pred = _predict_queries(s) + mm(s.nt, s.d, hidden) + mm(s.nt, hidden, s.d)
    return fit, pred + mm(s.nt, s.d, s.c) + ew(4 * s.nt * s.d)


def _distinct_rows(s: Shape, drawn: int) -> int:
    """Rows to normalise: each distinct (view, image) row once, at most the V·N stored."""
    return min(drawn, s.v * s.n)


def floor_taskres(m: Any, s: Shape, seen: dict) -> tuple[Work, Work]:
    """TaskRes: E epochs of N//B steps of B rows (Dassl's loader), Adam on the (C, D) residual.

    Per step: ``t' = t + α·x`` and its row norms (2·C·D), logits (B, D)·(D, C); backward,
    only the residual needs a gradient: (C, B)·(B, D), through the normalisation (3·C·D);
    Adam's update (4·C·D). Each drawn row is L2-normalised, which needs doing once per
    distinct (view, image) row: at most V·N rows (2·D each).
    Scoring: (Nt, D)·(D, C).
    """
    n_steps, b = _dassl_batches(s.n, int(m.batch_size))
    e = int(m.epochs)
    step = mm(b, s.d, s.c) + mm(s.c, b, s.d) + ew(5 * s.c * s.d) + update("adam", s.c * s.d)
    step = step + steps(1)
    fit = step * (n_steps * e) + ew(2 * s.d * _distinct_rows(s, n_steps * b * e))
    return fit, _predict_queries(s) + mm(s.nt, s.d, s.c)


def _pooled_batches(s: Shape, b: int) -> tuple[int, int]:
    n_batches = s.n // b if s.n >= b else 1
    take = min(n_batches * b, s.v * s.n)
    return n_batches, math.ceil(take / n_batches)


def floor_zs_lp(m: Any, s: Shape, seen: dict) -> tuple[Work, Work]:
    """ZS-LP: E epochs of N//B steps of B rows drawn from the pooled V·N views, SGD.

    Per step: the prototypes normalised (2·C·D), logits (B, D)·(D, C), their softmax; the
    gradient (C, B)·(B, D), its radial projection (3·C·D) and the momentum update (3·C·D).
    Each drawn row normalised once per distinct row (at most V·N).
    Scoring: (Nt, D)·(D, C).
    """
    n_steps, b = _pooled_batches(s, int(m.batch_size))
    e = int(m.epochs)
    step = mm(b, s.d, s.c) + mm(s.c, b, s.d) + ew(5 * s.c * s.d + 3 * b * s.c)
    step = step + update("sgd", s.c * s.d) + steps(1)
    fit = step * (n_steps * e) + ew(2 * s.d * _distinct_rows(s, n_steps * b * e))
    return fit, _predict_queries(s) + mm(s.nt, s.d, s.c)


def floor_clap(m: Any, s: Shape, seen: dict) -> tuple[Work, Work]:
    """CLAP: ZS-LP's schedule plus the penalty's weights and gradient.

    The weights λ_k need the zero-shot softmax of every normalised view: V products
    (N, D)·(D, C); the penalty's gradient adds 2·C·D per step.
    """
    fit, pred = floor_zs_lp(m, s, seen)
    n_steps, _ = _pooled_batches(s, int(m.batch_size))
    extra = mm(s.n, s.d, s.c, s.v) + ew(2 * s.v * s.n * s.d)
    return fit + extra + ew(2 * s.c * s.d * n_steps * int(m.epochs)), pred


def floor_cross_modal_lp(m: Any, s: Shape, seen: dict) -> tuple[Work, Work]:
    """Cross-modal linear probe: ``iters`` AdamW steps of B rows (B = 32: latency-bound).

    The (1 + V)·N image rows are normalised once. Per step: logits (B, D)·(D, C), the
    gradient of the head (C, B)·(B, D), AdamW (4·C·D). Validation every ``eval_every`` steps:
    (Nv, D)·(D, C). With ``search`` the whole schedule runs once per configuration.
    Scoring: (Nt, D)·(D, C).
    """
    b, iters = int(m.batch_size), int(m.iters)
    configs = 1
    if m.search and s.nv:
        configs = len(m.search_lr) * len(m.search_weight_decay) * len(m.search_batch_size)
    step = mm(b, s.d, s.c) + mm(s.c, b, s.d) + update("adamw", s.c * s.d) + steps(1)
    evals = math.ceil(iters / int(m.eval_every)) + 1 if s.nv else 0
    run = step * iters + mm(s.nv, s.d, s.c, evals)
    fit = run * configs + ew(2 * (1 + s.v) * s.n * s.d)
    return fit, _predict_queries(s) + mm(s.nt, s.d, s.c)


def floor_lp_pp(m: Any, s: Shape, seen: dict) -> tuple[Work, Work]:
    """LP++: E full-batch epochs over the N normalised support rows.

    Once: the text similarities (N, D)·(D, C); the step size needs λ_max(FᵀF): the float64
    Gram matrix (D, N)·(N, D) (the few power iterations on it, 2·D² each, are not counted).
    Per epoch: logits (N, D)·(D, C), the gradient (C, N)·(N, D), the softmax and the update
    (4·N·C + 4·C·D), and the validation logits (Nv, D)·(D, C).
    Scoring: two (Nt, D)·(D, C) products (visual and text).
    """
    rows = s.n * (1 + s.v) if m.use_views else s.n
    e = int(m.epochs)
    once = mm(rows, s.d, s.c) + mm(s.d, rows, s.d, dtype="float64") + ew(2 * rows * s.d)
    epoch = mm(rows, s.d, s.c) + mm(s.c, rows, s.d) + ew(4 * rows * s.c + 4 * s.c * s.d)
    epoch = epoch + mm(s.nv, s.d, s.c) + steps(1)
    fit = once + epoch * e + mm(s.nv, s.d, s.c)
    return fit, _predict_queries(s) + mm(s.nt, s.d, s.c, 2)


def floor_linear_probe(m: Any, s: Shape, seen: dict) -> tuple[Work, Work]:
    """Linear probe: one L-BFGS fit per C of the sweep (or one fit), over the N normalised rows.

    Each function evaluation: logits (N, D)·(D, C) and the weights' gradient (C, N)·(N, D),
    the softmax cross-entropy (4·N·C); each L-BFGS iteration's two-loop recursion over a
    history of up to 20 pairs (4·20·C·D). The evaluation and iteration counts are the ones
    the fit ran (counted in ``seen``). Each C is scored on validation: (Nv, D)·(D, C).
    Scoring: (Nt, D)·(D, C).
    """
    rows = s.n * (1 + s.v) if m.use_views else s.n
    evals, iters = int(seen.get("lbfgs_evals", 0)), int(seen.get("lbfgs_iters", 0))
    fits = int(seen.get("lbfgs_fits", 1))
    per_eval = mm(rows, s.d, s.c) + mm(s.c, rows, s.d) + ew(4 * rows * s.c)
    fit = per_eval * evals + ew(80 * s.c * s.d * iters) + ew(2 * rows * s.d)
    fit = fit + mm(s.nv, s.d, s.c, fits if s.nv else 0) + steps(evals)
    return fit, _predict_queries(s) + mm(s.nt, s.d, s.c)


def floor_gda(m: Any, s: Shape, seen: dict) -> tuple[Work, Work]:
    """GDA: class means and the pooled within-class scatter of the V·N normalised views, then
    ``w_k = P·μ_k`` with P the inverse of the shrunk covariance.

    The scatter: V products (D, N)·(N, D) (a symmetric result, counted in full), normalising
    and centring every view (4·V·N·D, means included). P is only used through ``P·M`` for
    the C class means, so the floor is one Cholesky factorisation of the (D, D) system and
    two triangular solves with C right-hand sides (D³/3 + 2·D²·C); the biases need C·D.
    The α search: (Nv, D)·(D, C) twice (text and discriminant).
    Scoring: (Nt, D)·(D, C) twice.
    """
    views = s.v if m.use_views else 1
    fit = mm(s.d, s.n, s.d, views) + ew(4 * views * s.n * s.d) + cholesky(s.d, s.c)
    if s.nv and m.alpha is None:
        fit = fit + mm(s.nv, s.d, s.c, 2) + ew(2 * s.nv * s.d)
    return fit, _predict_queries(s) + mm(s.nt, s.d, s.c, 2)


def floor_proker(m: Any, s: Shape, seen: dict) -> tuple[Work, Work]:
    """ProKeR: ``α = (K_SS/λ + I)⁻¹(Y − z_S)`` over M support rows, (β, λ) searched on val.

    M = N (``rows_`` features or mean) or V·N (views). Once: the rows normalised, their
    residual (M, D)·(D, C), the Gram matrix (M, D)·(D, M), the validation affinity
    (Nv, D)·(D, M) and zero-shot logits (Nv, D)·(D, C).

    - Cholesky, per (β, λ): the system ``exp(β(A − 1)) + λI`` (one pass over M²), its
      factorisation and two triangular solves with C right-hand sides (M³/3 + 2·M²·C), the
      validation logits (Nv, M)·(M, C); per β the validation kernel (Nv·M). The chosen
      point's α can be kept from the search, so no final solve is counted.
    - Nyström with m landmarks, per β: K_Sm (M·m), K_mS·K_Sm (m, M)·(M, m), K_mS·R
      (m, M)·(M, C); per (β, λ) a float64 factorisation and solve of the (m, m) system and
      (Nv, m)·(m, C).
    - eigh, per β: the kernel (M²) and its eigendecomposition, counted as 4/3·M³ (reduction to
      tridiagonal form, the lower bound of LAPACK's path) plus 2·M³ for the eigenvectors; per
      λ one (Nv, M)·(M, C) product.
    - CG: per iteration one chunked kernel product (M, D)·(D, M), (M, M)·(M, C), for the
      iterations the final solve ran (``cg_iterations_``; the search's are not counted).

    Scoring: (Nt, D)·(D, C), the kernel against the centres and its product with α.
    """
    rows = getattr(m, "rows_", "features")
    mrows = s.v * s.n if rows == "views" else s.n
    n_beta = 1 if m.beta is not None else len(m.betas)
    n_lam = 1 if m.lam is not None else len(m.lams)
    search = s.nv > 0 and (m.beta is None or m.lam is None)
    if not search:
        n_beta = n_lam = 1
    solver = getattr(m, "solver_", "cholesky")
    fit = ew(2 * mrows * s.d) + mm(mrows, s.d, s.c)
    if search:
        fit = fit + mm(s.nv, s.d, s.c) + ew(2 * s.nv * s.d)
    centres = mrows
    if solver == "nystrom":
        land = min(int(m.n_landmarks), mrows)
        centres = land
        fit = fit + mm(mrows, s.d, land) + mm(land, s.d, land) + mm(s.nv, s.d, land)
        per_beta = ew(mrows * land + land * land + s.nv * land)
        per_beta = per_beta + mm(land, mrows, land) + mm(land, mrows, s.c)
        per_point = cholesky(land, s.c, "float64") + mm(s.nv, land, s.c) + ew(land * land)
        fit = fit + per_beta * n_beta + per_point * (n_beta * n_lam)
    elif solver == "eigh":
        fit = fit + mm(mrows, s.d, mrows) + mm(s.nv, s.d, mrows)
        eig = Work(solve=Counter({"float32": (4 / 3 + 2) * mrows**3}))
        per_beta = eig + ew(mrows * mrows) + mm(s.nv, mrows, mrows) + mm(mrows, mrows, s.c)
        fit = fit + per_beta * n_beta + mm(s.nv, mrows, s.c, n_beta * n_lam)
    elif solver == "cg":
        iters = int(getattr(m, "cg_iterations_", None) or 0)
        fit = fit + (mm(mrows, s.d, mrows) + mm(mrows, mrows, s.c) + ew(mrows * mrows)) * iters
    else:
        fit = fit + mm(mrows, s.d, mrows)
        per_point = cholesky(mrows, s.c) + ew(mrows * mrows) + mm(s.nv, mrows, s.c)
        if search:
            fit = fit + mm(s.nv, s.d, mrows) + ew(s.nv * mrows * n_beta)
        fit = fit + per_point * (n_beta * n_lam)
    pred = _predict_queries(s) + mm(s.nt, s.d, s.c) + mm(s.nt, s.d, centres)
    return fit, pred + ew(s.nt * centres) + mm(s.nt, centres, s.c)


def _ape_channels(m: Any, s: Shape) -> int:
    return int(m.channels) if m.channels is not None else max(1, round(m.channel_fraction * s.d))


def floor_ape(m: Any, s: Shape, seen: dict) -> tuple[Work, Work]:
    """APE: Tip's cache on Q refined channels, values re-weighted by exp(γ·KL_j).

    Fit: the keys (as Tip), the channel criterion (class sums of keys and text, 4·(N + C)·D),
    the keys on Q channels renormalised (2·N·Q), their zero-shot KL (N, Q)·(Q, C). Search:
    the validation rows normalised (2·Nv·D) and on Q channels (2·Nv·Q), the text logits
    (Nv, D)·(D, C), the affinity (Nv, Q)·(Q, N); per β the exponential over (Nv, N), per
    (β, γ) the re-weighted class-wise sum (2 passes).
    Scoring: (Nt, D)·(D, C), (Nt, Q)·(Q, N), exponential, weights and class sum (3 passes).
    """
    q = _ape_channels(m, s)
    fit = _cache_keys(s) + ew(4 * (s.n + s.c) * s.d + 2 * s.n * q) + mm(s.n, q, s.c)
    if m.search and s.nv:
        n_beta, n_gamma = int(m.search_step[0]), int(m.search_step[2])
        fit = fit + ew(2 * s.nv * s.d + 2 * s.nv * q) + mm(s.nv, s.d, s.c) + mm(s.nv, q, s.n)
        fit = fit + _grid_passes(1 + 2 * n_gamma, n_beta, s.nv, s.n)
    pred = _predict_queries(s) + mm(s.nt, s.d, s.c) + ew(2 * s.nt * q) + mm(s.nt, q, s.n)
    return fit, pred + ew(3 * s.nt * s.n)


def floor_ape_t(m: Any, s: Shape, seen: dict) -> tuple[Work, Work]:
    """APE-T: a (C, Q) residual and N value weights trained for E epochs of ⌈N/B⌉ AdamW steps.

    The affinity of a drawn row with the fixed keys does not change across epochs, so it is
    needed once per distinct (view, image) row: (R, D)·(D, N) and its exponential, with R =
    min(E·N, V·N). Per step of b rows: the text logits (b, D)·(D, C) (fixed: again once per
    distinct row, counted with the affinity), the residual's logits (b, Q)·(Q, C) and its
    gradient (C, b)·(b, Q); the weighted class sum and the value weights' gradient (3·b·N);
    AdamW over C·Q + N parameters (4 each). Validation per epoch: (Nv, Q)·(Q, C) and two
    passes over (Nv, N) (its affinity once). Then Tip's (β, α) search with value weights.
    Scoring: (Nt, D)·(D, C), (Nt, D)·(D, N), exponential, weights and class sum.
    """
    q = _ape_channels(m, s)
    b, e = int(m.batch_size), int(m.epochs)
    n_steps = math.ceil(s.n / b)
    distinct = min(e * s.n, s.v * s.n)
    fit = _cache_keys(s) + ew(4 * (s.n + s.c) * s.d)
    fit = fit + mm(distinct, s.d, s.n) + mm(distinct, s.d, s.c) + ew(distinct * (s.n + 2 * s.d))
    epoch = mm(s.n, q, s.c) + mm(s.c, s.n, q) + ew(3 * s.n * s.n)
    epoch = epoch + update("adamw", s.c * q + s.n) * n_steps + steps(n_steps)
    if s.nv:
        epoch = epoch + mm(s.nv, q, s.c) + ew(2 * s.nv * s.n)
        fit = fit + mm(s.nv, s.d, s.n) + mm(s.nv, s.d, s.c) + ew(s.nv * s.n + 2 * s.nv * s.d)
    fit = fit + epoch * e
    if m.search and s.nv:
        n_beta = int(m.search_step[0])
        fit = fit + mm(s.nv, q, s.c) + ew(s.nv * s.n) + _grid_passes(3, n_beta, s.nv, s.n)
    pred = _tip_predict(s, keys=s.n) + ew(s.nt * s.n)
    return fit, pred


def floor_tip_x(m: Any, s: Shape, seen: dict) -> tuple[Work, Work]:
    """TIP-X: Tip's cache plus a KL term between image-text signatures.

    Fit: the keys (as Tip) and their signatures softmax(keys·Tᵀ/τ) (N, D)·(D, C); the ranges
    of ψ over the validation rows: the affinity (Nv, D)·(D, N), the signatures
    (Nv, D)·(D, C), the KL matrix (Nv, C)·(C, N) and their minima and maxima (2 passes over
    (Nv, N) each); the search: the text logits (Nv, D)·(D, C), the class-summed KL term
    (Nv, C)·(C, C), per β two passes over (Nv, N) and the margins of the C class sums
    (2·Nv·C); the γ × α counting is pruned and data-dependent, not counted.
    Scoring: Tip's, plus the signatures (Nt, D)·(D, C) and the KL term (Nt, C)·(C, C).
    """
    fit = _cache_keys(s) + mm(s.n, s.d, s.c) + ew(3 * s.n * s.c)
    if s.nv:
        fit = fit + ew(2 * s.nv * s.d) + mm(s.nv, s.d, s.n) + mm(s.nv, s.d, s.c)
        fit = fit + mm(s.nv, s.c, s.n) + ew(4 * s.nv * s.n)
    if m.search and s.nv:
        n_beta = int(m.search_step[0])
        fit = fit + mm(s.nv, s.d, s.c) + mm(s.nv, s.c, s.c)
        fit = fit + _grid_passes(2, n_beta, s.nv, s.n) + ew(2 * n_beta * s.nv * s.c)
    pred = _tip_predict(s, keys=s.n) + mm(s.nt, s.d, s.c) + mm(s.nt, s.c, s.c)
    return fit, pred + ew(3 * s.nt * s.c)


FLOORS: dict[str, Callable[[Any, Shape, dict], tuple[Work, Work]]] = {
    "zero-shot": floor_zero_shot,
    "tip-adapter": floor_tip_adapter,
    "tip-adapter-f": floor_tip_adapter_f,
    "clip-adapter": floor_clip_adapter,
    "taskres": floor_taskres,
    "zs-lp": floor_zs_lp,
    "clap": floor_clap,
    "cross-modal-lp": floor_cross_modal_lp,
    "lp++": floor_lp_pp,
    "linear-probe": floor_linear_probe,
    "gda": floor_gda,
    "proker": floor_proker,
    "ape": floor_ape,
    "ape-t": floor_ape_t,
    "tip-x": floor_tip_x,
}


# -- the machine --------------------------------------------------------------------------------
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class Rates:
    """Throughputs measured in this process, with its torch thread count.

    ``gemm[dtype]``: the best GFLOP/s of square-ish products (the FLOP floor's rate);
    ``elem``: element-operations per second of an in-cache in-place multiply; ``shape_time``:
    seconds per bare ``torch.mm`` at a given shape, in a tight loop into a preallocated output
    (the best of three timings)."""

    PEAK_SHAPES = ((1024, 1024, 1024), (2048, 1024, 2048), (1600, 1024, 1600))

    def __init__(self) -> None:
        self.gemm = {name: self.peak(name) for name in _DTYPES}
        self.elem = self.elementwise()
        self._shape: dict[tuple[int, int, int, str], float] = {}
        self._update: dict[tuple[str, int], float] = {}

    def peak(self, dtype: str) -> float:
        return max(
            2.0 * m * k * n / self.shape_time(m, k, n, dtype, cache=False)
            for m, k, n in self.PEAK_SHAPES
        )

    @staticmethod
    def elementwise() -> float:
        """The best rate of an in-place multiply over cache-sized blocks, with this process's
        threads or one (elementwise results do not depend on the thread count, and on a shared
        machine one thread avoids waiting for the other at every small operation)."""
        threads, best = torch.get_num_threads(), 0.0
        try:
            for n_threads in sorted({threads, 1}):
                torch.set_num_threads(n_threads)
                for numel in (2**16, 2**18):
                    a = torch.rand(numel)
                    for _ in range(5):
                        t0 = time.perf_counter()
                        for _ in range(50):
                            a.mul_(1.0000001)
                        best = max(best, 50 * numel / (time.perf_counter() - t0))
        finally:
            torch.set_num_threads(threads)
        return best

    def shape_time(self, m: int, k: int, n: int, dtype: str, *, cache: bool = True) -> float:
        key = (m, k, n, dtype)
        if cache and key in self._shape:
            return self._shape[key]
        dt = _DTYPES[dtype]
        a, b = torch.rand(m, k, dtype=dt), torch.rand(k, n, dtype=dt)
        out = torch.empty(m, n, dtype=dt)
        torch.mm(a, b, out=out)
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        once = max(time.perf_counter() - t0, 1e-6)
        reps = max(3, min(2000, int(0.03 / once)))
        best = math.inf
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(reps):
                torch.mm(a, b, out=out)
            best = min(best, (time.perf_counter() - t0) / reps)
        if cache:
            self._shape[key] = best
        return best

    def update_time(self, kind: str, params: int) -> float:
        """Seconds per step of ``torch.optim`` SGD (momentum 0.9, weight decay), Adam or AdamW
        with ``fused=True`` over one float32 tensor of ``params`` parameters (the best of
        three timings of a tight loop)."""
        key = (kind, params)
        if key not in self._update:
            p = torch.nn.Parameter(torch.rand(params))
            p.grad = torch.rand(params) * 1e-3
            optim: torch.optim.Optimizer
            if kind == "sgd":
                optim = torch.optim.SGD([p], lr=1e-3, momentum=0.9, weight_decay=5e-4, fused=True)
            elif kind == "adam":
                optim = torch.optim.Adam([p], lr=1e-3, fused=True)
            else:
                optim = torch.optim.AdamW([p], lr=1e-3, fused=True)
            for _ in range(3):
                optim.step()
            reps, best = max(3, min(500, int(2e8 / max(1, params)))), math.inf
            for _ in range(3):
                t0 = time.perf_counter()
                for _ in range(reps):
                    optim.step()
                best = min(best, (time.perf_counter() - t0) / reps)
            self._update[key] = best
        return self._update[key]

    def flop_floor(self, work: Work) -> float:
        """Seconds for ``work`` at the peak rates."""
        t = sum(
            2.0 * m * k * n * count / self.gemm[dt] for (m, k, n, dt), count in work.gemm.items()
        )
        t += sum(flops / self.gemm[dt] for dt, flops in work.solve.items())
        elem = work.elem + sum(
            UPDATE_PASSES[kind] * params * count for (kind, params), count in work.updates.items()
        )
        return t + elem / self.elem

    def shape_floor(self, work: Work) -> float:
        """Seconds for ``work`` with every product timed at its own shape and every optimiser
        update timed at its own size."""
        t = sum(count * self.shape_time(m, k, n, dt) for (m, k, n, dt), count in work.gemm.items())
        t += sum(flops / self.gemm[dt] for dt, flops in work.solve.items())
        t += sum(
            count * self.update_time(kind, params) for (kind, params), count in work.updates.items()
        )
        return t + work.elem / self.elem
