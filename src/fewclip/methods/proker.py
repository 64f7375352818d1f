"""ProKeR: proximal kernel ridge regression towards zero-shot CLIP (Bendou et al., CVPR 2025).

"A Kernel Perspective on Training-Free Few-Shot Adaptation of Large Vision-Language Models".
Tip-Adapter's cache is a (non-normalised) Nadaraya–Watson smoother, a purely local adapter.
ProKeR instead fits a function in the RKHS of the Tip kernel ``k(a, b) = exp(−β(1 − aᵀb))``
to the *residual* of the zero-shot classifier on the support rows, with a proximal penalty
that keeps it close to CLIP:

    α = (K_SS/λ + I)⁻¹ (Y − z_S),      logits(x) = z(x) + K(x, S)·α

with S the L2-normalised support rows, Y their one-hot labels, z(x) = scale·x·Tᵀ the zero-shot
logits (scale 1 in the reference code) and K_SS = k(S, S). λ → ∞ gives a Tip-Adapter-like cache
on the residual, λ → 0 gives back zero-shot.

The closed form needs an (M, M) solve with M support rows (16,000 for ImageNet 16-shot, ten
times more with every augmented view as a row, which ran out of 32 GB in the reference). This
module solves it exactly, when the kernel fits a memory budget, by a dense Cholesky
factorisation per (β, λ) or by one eigendecomposition ``K_SS = U·diag(w)·Uᵀ`` per β that serves
every λ of the search, ``α(λ) = U·diag(λ/(w + λ))·Uᵀ·(Y − z_S)``; beyond the budget, by a
preconditioned conjugate-gradient solver whose kernel products are computed in row chunks
(never forming K); and approximately, on request, with Nyström landmarks.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from fewclip.errors import BudgetError, InvalidValueError
from fewclip.functional import (
    cache_keys,
    count_correct,
    first_best,
    kernel_matmul,
    l2_normalize,
    psd_cholesky,
    tip_affinity,
)
from fewclip.methods.base import Method, register
from fewclip.task import FeatureSet, Task

__all__ = [
    "IMAGENET_HPARAMS",
    "ProKeR",
    "kernel_eigh",
    "nystrom_coef",
    "proker_cg",
    "proker_cholesky",
    "proker_eigh",
]

_ROWS = ("auto", "features", "mean", "views")
_SOLVERS = ("auto", "cholesky", "eigh", "cg", "nystrom")

#: Val-free hyper-parameters by shots: ProKeR's ``imagenet`` selection mode (β, λ tuned on
#: ImageNet, RN50, averaged over seeds, then transferred to every dataset).
IMAGENET_HPARAMS: dict[int, tuple[float, float]] = {
    1: (3.0, 0.05),
    2: (2.6, 0.05),
    4: (1.5, 0.05),
    8: (1.66, 0.07),
    16: (1.7, 0.1),
}

_CHUNK_BYTES = 256 * 2**20


def _potrf_inplace(h: Tensor) -> int:
    """Lower Cholesky factor of the symmetric h in h's lower triangle (its upper one zeroed);
    returns LAPACK's info (0: done).

    LAPACK works on column-major matrices: h's transpose is the same matrix in that layout, and
    its upper factor ``U = Lᵀ`` lands in h's lower triangle as L. Factorising h itself would
    make torch copy it to column-major first, one more (M, M) matrix.
    """
    _, info = torch.linalg.cholesky_ex(
        h.mT, upper=True, out=(h.mT, torch.empty(0, dtype=torch.int32, device=h.device))
    )
    return int(info)


def _cholesky_inplace(h: Tensor, rebuild: Callable[[Tensor], Tensor]) -> Tensor:
    """Lower Cholesky factor of h, written over h; float64 retry when h is not numerically PD.

    No copy of h is kept: a float32 h whose factorisation breaks down is written again by
    ``rebuild(h)`` (h's values, into h) and factorised in float64, 2·M² more numbers for the
    duration of the retry; the factor is returned in h's dtype, in h.
    """
    info = _potrf_inplace(h)
    if info == 0:
        return h
    if h.dtype == torch.float64:
        raise torch.linalg.LinAlgError(
            f"ProKeR: the kernel system is not positive definite (leading minor {info})"
        )
    h64 = rebuild(h).double()
    torch.linalg.cholesky(h64.mT, upper=True, out=h64.mT)
    return h.copy_(h64)


def proker_cholesky(
    gram_minus_one: Tensor,
    residual: Tensor,
    *,
    beta: float,
    lam: float,
    work: Tensor | None = None,
) -> Tensor:
    """Exact ``α = (K/λ + I)⁻¹ R`` by a dense Cholesky factorisation, from ``A − 1`` (M, M).

    ``gram_minus_one`` is ``S·Sᵀ − 1`` for the normalised rows S (so that K = exp(β·(A − 1))
    for any β without recomputing the Gram matrix). Computed as ``λ·(K + λI)⁻¹R``; uses one
    (M, M) work matrix besides the input (``work``, reused when given), factorised and solved
    in place: 2·M² numbers in all (4·M² while a float32 breakdown is retried in float64).
    """
    if lam <= 0:
        raise InvalidValueError(f"lam: expected a positive regularisation, found {lam}")

    def system(out: Tensor | None) -> Tensor:  # K + λI, into out
        h = torch.mul(gram_minus_one, beta, out=out) if out is not None else gram_minus_one * beta
        h.exp_()
        h.diagonal().add_(lam)
        return h

    factor = _cholesky_inplace(system(work), system)
    # two triangular solves: cholesky_solve would copy the factor into a new (M, M) matrix
    half = torch.linalg.solve_triangular(factor, residual.to(factor.dtype), upper=False)
    return torch.linalg.solve_triangular(factor.mT, half, upper=True).mul_(lam).to(residual.dtype)


def kernel_eigh(keys: Tensor, *, beta: float, out: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Eigendecomposition ``K = U·diag(w)·Uᵀ`` of the kernel ``K = exp(β·(S·Sᵀ − 1))`` over the
    normalised rows S (M, D); returns ``(w, U)``, w (M,) ascending and clamped at 0.

    K is formed in one (M, M) matrix (``out``, reused when given) and decomposed in place
    (``torch.linalg.eigh``, LAPACK's divide-and-conquer ``syevd``): the matrix then holds U,
    column-major, so no second (M, M) matrix is allocated. LAPACK adds a workspace of
    2·M² + O(M) numbers for the duration of the call: 3·M² numbers at the peak. K is positive
    semi-definite (an exponential of a Gram matrix, by the Schur product theorem), so
    eigenvalues rounded below zero are set to 0.
    """
    m = keys.shape[0]
    k = torch.mm(keys, keys.T, out=out) if out is not None else keys @ keys.T
    k.sub_(1.0).mul_(beta).exp_()
    # k is symmetric: its transpose is the same matrix in the column-major layout LAPACK
    # writes the eigenvectors in, so eigh overwrites k instead of copying it
    evals, evecs = torch.linalg.eigh(k.mT, out=(k.new_empty(m), k.mT))
    return evals.clamp_(min=0.0), evecs


def proker_eigh(evals: Tensor, evecs: Tensor, residual: Tensor, *, lam: float) -> Tensor:
    """Exact ``α = (K/λ + I)⁻¹ R`` from the eigendecomposition ``K = U·diag(w)·Uᵀ``
    (:func:`kernel_eigh`): ``(K/λ + I)⁻¹ = U·diag(1/(w/λ + 1))·Uᵀ = U·diag(λ/(w + λ))·Uᵀ``, so
    ``α = U·(diag(λ/(w + λ))·(Uᵀ·R))``: two (M, M)·(M, C) products, and one decomposition
    serves every λ.
    """
    if lam <= 0:
        raise InvalidValueError(f"lam: expected a positive regularisation, found {lam}")
    shrink = lam / (evals + lam)
    proj = evecs.T @ residual.to(evecs.dtype)
    return (evecs @ proj.mul_(shrink[:, None])).to(residual.dtype)


def nystrom_coef(
    k_sm: Tensor,
    k_mm: Tensor,
    residual: Tensor,
    *,
    lam: float,
    gram: Tensor | None = None,
    rhs: Tensor | None = None,
) -> Tensor:
    """Nyström ProKeR coefficients c (m, C), so that ``f(x) = K(x, landmarks)·c``.

    With ``K ≈ K_Sm K_mm⁻¹ K_mS`` the closed form becomes
    ``c = λ·(K_mS K_Sm + λ·K_mm)⁻¹ K_mS R`` (exact when the landmarks are all rows). The
    (m, m) system is factorised in float64. ``gram`` = ``K_mS K_Sm`` and ``rhs`` = ``K_mS R``
    may be passed (any dtype) when they are reused over several λ.
    """
    if lam <= 0:
        raise InvalidValueError(f"lam: expected a positive regularisation, found {lam}")
    g = (gram if gram is not None else k_sm.T @ k_sm).double()
    factor = psd_cholesky(torch.add(g, k_mm.double(), alpha=lam))
    b = (rhs if rhs is not None else k_sm.T @ residual).double()
    return torch.cholesky_solve(b, factor).mul_(lam).to(residual.dtype)


def proker_cg(
    keys: Tensor,
    residual: Tensor,
    *,
    beta: float,
    lam: float,
    tol: float = 1e-6,
    max_iter: int = 1000,
    n_landmarks: int = 512,
    seed: int = 1,
    x0: Tensor | None = None,
    chunk_bytes: int = _CHUNK_BYTES,
) -> tuple[Tensor, int]:
    """``α = (K/λ + I)⁻¹ R`` by preconditioned conjugate gradients, one system per column of R.

    The kernel is never formed: every product ``K·P`` is computed over row chunks whose
    temporaries stay within ``chunk_bytes`` (memory O(M·(C + m)) besides). The preconditioner
    is the Nyström approximation of the same system, applied with the Woodbury identity,
    ``(ΦΦᵀ/λ + I)⁻¹ = I − Φ(λI + ΦᵀΦ)⁻¹Φᵀ`` with ``Φ = K_Sm·L⁻ᵀ`` and ``K_mm = LLᵀ`` for
    ``n_landmarks`` rows chosen at random (0 disables it). Stops when every column's residual
    norm is below ``tol`` times its right-hand side's. Returns ``(α, iterations)``.
    """
    if lam <= 0:
        raise InvalidValueError(f"lam: expected a positive regularisation, found {lam}")
    m_rows = keys.shape[0]
    precond = None
    if n_landmarks > 0:
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(m_rows, generator=g)[: min(n_landmarks, m_rows)].sort().values
        land = keys[idx.to(keys.device)]
        k_mm = tip_affinity(land, land, beta=beta)
        chol_mm = psd_cholesky(k_mm.double())
        phi = torch.linalg.solve_triangular(
            chol_mm, tip_affinity(keys, land, beta=beta).double().T, upper=False
        ).T  # (M, m) = K_Sm L⁻ᵀ
        inner = phi.T @ phi
        inner.diagonal().add_(lam)
        chol_inner = torch.linalg.cholesky(inner)

        def precond(r: Tensor) -> Tensor:
            rd = r.double()
            return (rd - phi @ torch.cholesky_solve(phi.T @ rd, chol_inner)).to(r.dtype)

    def apply(p: Tensor) -> Tensor:
        return kernel_matmul(keys, keys, p, beta=beta, chunk_bytes=chunk_bytes) / lam + p

    x = torch.zeros_like(residual) if x0 is None else x0.clone()
    r = residual - apply(x) if x0 is not None else residual.clone()
    target = tol * residual.norm(dim=0)
    z = precond(r) if precond is not None else r
    p = z.clone()
    rz = (r * z).sum(0)
    it = 0
    while it < max_iter and bool((r.norm(dim=0) > target).any()):
        q = apply(p)
        pq = (p * q).sum(0)
        a = torch.where(pq > 0, rz / pq.clamp_min(torch.finfo(pq.dtype).tiny), 0.0)
        x.add_(p * a)
        r.sub_(q * a)
        z = precond(r) if precond is not None else r
        rz_new = (r * z).sum(0)
        b = torch.where(rz > 0, rz_new / rz.clamp_min(torch.finfo(rz.dtype).tiny), 0.0)
        p = z + p * b
        rz = rz_new
        it += 1
    return x, it


def _shots(task: Task) -> int:
    return max(1, round(task.support.n / task.n_classes))


def _nearest_shots(shots: int) -> int:
    return min(IMAGENET_HPARAMS, key=lambda k: (abs(math.log(k) - math.log(shots)), k))


@register("proker")
class ProKeR(Method):
    """ProKeR, training-free (Bendou et al., CVPR 2025).

    ``logits(x) = scale·x·Tᵀ + K(x, S)·α``, ``α = (K_SS/λ + I)⁻¹(Y − scale·S·Tᵀ)``,
    ``K(a, b) = exp(−β(1 − aᵀb))`` on L2-normalised features.

    Hyper-parameters: β and λ are searched on ``task.val`` over ``betas × lams`` (β outer, λ
    inner, strict ``>`` keeps the first best, as the reference loop) unless fixed with
    ``beta``/``lam``. Without a validation set, the unset ones come from ``IMAGENET_HPARAMS``
    for the nearest shot count (the reference's ``imagenet`` transfer mode).

    Args:
        beta, lam: fixed β / λ (no search over that one).
        betas, lams: the validation grid (10 × 10 as in the reference's configs).
        rows: the support rows S: ``"views"`` (every augmented view a row: the released
            ``main.py``, whose default ``--augment-epoch 10`` stacks 10 augmented passes; V
            times more rows), ``"features"`` (one row per image, the plain features: the
            reference with ``--augment-epoch 1``), ``"mean"`` (Tip-Adapter's cache keys, the
            normalised mean of the views) or ``"auto"`` (default): ``"views"`` when the support
            has views and their dense kernel fits ``max_kernel_bytes``, else ``"features"``
            (the fitted ``rows_`` says which).
        solver: ``"cholesky"`` (exact, dense, one factorisation per (β, λ); needs
            ``max_kernel_bytes`` ≥ 2·M²·itemsize), ``"eigh"`` (exact, dense, one
            eigendecomposition ``K_SS = U·diag(w)·Uᵀ`` per β for every λ:
            ``val logits(λ) = z_val + (K_vS·U)·diag(λ/(w + λ))·(Uᵀ·R)``; needs
            ``max_kernel_bytes`` ≥ 3·M²·itemsize: one (M, M) matrix and LAPACK's workspace),
            ``"cg"`` (exact to ``tol``; chunked kernel products, Nyström-preconditioned),
            ``"nystrom"`` (approximate, ``n_landmarks`` random rows; exact when
            ``n_landmarks ≥ M``) or ``"auto"`` (default): Cholesky when it fits the budget,
            else CG. ``"auto"`` never picks ``"eigh"`` (decision rule, measured on the 2-core
            CPU with ``benchmarks/proker_views.py``): with the default 10 λ the decomposition
            searched up to 1.5× faster than Cholesky on two idle threads at M ≤ 3,200, but
            1.2–1.3× slower on one thread (M = 1,600 to 6,400), several times slower when
            other processes share the cores, and 1.6× (one thread) to 3× (two threads, busy
            machine) slower per β at M = 16,000, where one eigendecomposition costs 18 to 33
            Cholesky factorisations. It pays for λ grids much longer than that ratio, on free
            cores. Nyström is never chosen automatically either.
        n_landmarks: Nyström rank for ``"nystrom"`` and for the CG preconditioner.
        max_kernel_bytes: memory budget of the dense path.
        tol, max_iter: CG stopping rule (relative residual per class column).
        scale: zero-shot logit scale inside ProKeR (1 in the reference code).
        seed: landmark sampling seed.
        dtype, device: compute precision and device (float16 fits in float32, then casts).

    Attributes:
        text_weights_ (C, D) tensor: the L2-normalised text classifier T.
        centers_ (M, D) tensor: the kernel centres: the support rows, or the landmarks for
            Nyström; ``logits(x) = scale·x·Tᵀ + K(x, centers_)·dual_coef_``.
        dual_coef_ (M, C) tensor: the kernel weights α.
        beta_, lam_ (float): the β and λ in use (searched, given, or the ImageNet transfer).
        solver_ (str): the solver used; rows_ (str): the support rows used.
        cg_iterations_ (int or None): conjugate-gradient iterations (CG only).
        val_accuracy_ (float or None): validation accuracy in % at (β, λ); None without a search.
    """

    training_free = True
    uses_validation = True
    new_class_refusal = "its kernel regression fits one coefficient column per training class"
    chooses_on_validation = frozenset({"search"})
    quick_params: ClassVar[Mapping[str, Any]] = {"betas": (1.0, 4.0), "lams": (0.03, 0.3)}

    _state_tensors = ("text_weights_", "centers_", "dual_coef_")
    _state_values = ("beta_", "lam_", "solver_", "rows_", "val_accuracy_", "cg_iterations_")

    def __init__(
        self,
        *,
        beta: float | None = None,
        lam: float | None = None,
        betas: Sequence[float] = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0),
        lams: Sequence[float] = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0),
        rows: str = "auto",
        solver: str = "auto",
        n_landmarks: int = 1024,
        max_kernel_bytes: int = 2 * 2**30,
        tol: float = 1e-5,
        max_iter: int = 1000,
        scale: float = 1.0,
        seed: int = 1,
        dtype: str = "float32",
        device: str = "cpu",
    ):
        self.beta = beta
        self.lam = lam
        self.betas = betas
        self.lams = lams
        self.rows = rows
        self.solver = solver
        self.n_landmarks = n_landmarks
        self.max_kernel_bytes = max_kernel_bytes
        self.tol = tol
        self.max_iter = max_iter
        self.scale = scale
        self.seed = seed
        self.dtype = dtype
        self.device = device

    # -- helpers ----------------------------------------------------------------------------
    def _work_dtype(self) -> torch.dtype:
        return torch.float64 if self._dtype == torch.float64 else torch.float32

    def _validate(self) -> None:
        if self.rows not in _ROWS:
            raise InvalidValueError(f"rows: expected one of {_ROWS}, found {self.rows!r}")
        if self.solver not in _SOLVERS:
            raise InvalidValueError(f"solver: expected one of {_SOLVERS}, found {self.solver!r}")
        for name in ("beta", "lam"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise InvalidValueError(f"{name}: expected a positive value, found {v}")
        for name in ("betas", "lams"):
            grid = list(getattr(self, name))
            if not grid or any(not float(g) > 0 for g in grid):
                raise InvalidValueError(
                    f"{name}: expected a non-empty grid of positive values, found {grid}"
                )
        if self.n_landmarks < 1:
            raise InvalidValueError(
                f"n_landmarks: expected a positive integer, found {self.n_landmarks}"
            )

    def _resolve_rows(self, task: Task) -> str:
        """``rows``, with ``"auto"`` resolved: the reference's view rows where memory allows."""
        if self.rows != "auto":
            return self.rows
        s = task.support
        if s.views is None:
            return "features"
        m_rows = s.views.shape[0] * s.views.shape[1]
        itemsize = torch.empty((), dtype=self._work_dtype()).element_size()
        return "views" if self._fits(m_rows, itemsize) else "features"

    def _support_rows(self, task: Task) -> tuple[Tensor, Tensor]:
        s = task.support
        wd = self._work_dtype()
        labels = s.labels.to(self._device)
        self.rows_ = self._resolve_rows(task)
        if self.rows_ == "features":
            return l2_normalize(s.features.to(self._device, wd)), labels
        if self.rows_ == "mean":
            return cache_keys(s.view_bank().to(self._device, wd)), labels
        bank = s.view_bank()
        x = torch.cat([l2_normalize(bank[v].to(self._device, wd)) for v in range(bank.shape[0])])
        return x, labels.repeat(bank.shape[0])

    def _resolve_solver(self, m_rows: int, itemsize: int) -> str:
        if self.solver == "nystrom":
            return (
                "cholesky"
                if self.n_landmarks >= m_rows and self._fits(m_rows, itemsize)
                else ("nystrom")
            )
        if self.solver == "cholesky":
            if not self._fits(m_rows, itemsize):
                need = 2 * m_rows * m_rows * itemsize
                raise BudgetError(
                    f"solver='cholesky': {m_rows} support rows need {need / 2**30:.1f} GiB for the "
                    f"dense kernel, over max_kernel_bytes={self.max_kernel_bytes / 2**30:.1f} GiB; "
                    "use solver='cg' (exact, chunked) or solver='nystrom' (approximate)"
                )
            return "cholesky"
        if self.solver == "eigh":
            if not self._eigh_fits(m_rows, itemsize):
                need = 3 * m_rows * m_rows * itemsize
                raise BudgetError(
                    f"solver='eigh': {m_rows} support rows need {need / 2**30:.1f} GiB for the "
                    "kernel's eigenvectors and LAPACK's workspace, over "
                    f"max_kernel_bytes={self.max_kernel_bytes / 2**30:.1f} GiB; use "
                    "solver='cholesky' (2·M² numbers), solver='cg' (exact, chunked) or "
                    "solver='nystrom' (approximate)"
                )
            return "eigh"
        if self.solver == "cg":
            return "cg"
        # never "eigh": faster than Cholesky only on free cores and for long λ grids (above)
        return "cholesky" if self._fits(m_rows, itemsize) else "cg"

    def _fits(self, m_rows: int, itemsize: int) -> bool:
        return 2 * m_rows * m_rows * itemsize <= self.max_kernel_bytes

    def _eigh_fits(self, m_rows: int, itemsize: int) -> bool:
        return 3 * m_rows * m_rows * itemsize <= self.max_kernel_bytes

    def _landmarks(self, m_rows: int) -> Tensor:
        g = torch.Generator().manual_seed(self.seed)
        return torch.randperm(m_rows, generator=g)[: self.n_landmarks].sort().values

    # -- fitting ----------------------------------------------------------------------------
    def _fit(self, task: Task) -> None:
        self._validate()
        wd = self._work_dtype()
        keys, labels = self._support_rows(task)
        m_rows, c = keys.shape[0], task.n_classes
        text = l2_normalize(task.text_weights.to(self._device, wd))
        residual = torch.nn.functional.one_hot(labels, c).to(wd) - self.scale * (keys @ text.T)
        self.solver_ = self._resolve_solver(m_rows, keys.element_size())
        if self.solver_ != "nystrom" and m_rows > 8192 and self._device.type == "cpu":
            warnings.warn(
                f"ProKeR: exact solve over {m_rows} support rows on CPU is slow; "
                "solver='nystrom' approximates it in seconds",
                stacklevel=3,
            )
        self.val_accuracy_: float | None = None
        betas = [float(self.beta)] if self.beta is not None else [float(b) for b in self.betas]
        lams = [float(self.lam)] if self.lam is not None else [float(v) for v in self.lams]
        searched: Tensor | None = None  # the eigh search returns the chosen point's α
        if task.val is not None and (self.beta is None or self.lam is None):
            if self.solver_ == "eigh":
                self.beta_, self.lam_, self.val_accuracy_, searched = self._search_eigh(
                    keys, residual, text, task.val, betas, lams
                )
            else:
                self.beta_, self.lam_, self.val_accuracy_ = self._search(
                    keys, residual, text, task.val, betas, lams
                )
        else:
            default_beta, default_lam = IMAGENET_HPARAMS[_nearest_shots(_shots(task))]
            self.beta_ = float(self.beta) if self.beta is not None else default_beta
            self.lam_ = float(self.lam) if self.lam is not None else default_lam
        self.cg_iterations_: int | None = None
        if searched is not None:
            centers, coef = keys, searched
        else:
            centers, coef = self._solve(keys, residual, self.beta_, self.lam_)
        self.centers_ = centers.to(self._dtype)
        # contiguous, as save() stores it, so a loaded method takes the same matmul path
        self.dual_coef_ = coef.to(self._dtype).contiguous()
        self.text_weights_ = text.to(self._dtype)

    def _solve(
        self, keys: Tensor, residual: Tensor, beta: float, lam: float
    ) -> tuple[Tensor, Tensor]:
        if self.solver_ == "nystrom":
            land = keys[self._landmarks(keys.shape[0]).to(keys.device)]
            k_sm = tip_affinity(keys, land, beta=beta)
            return land, nystrom_coef(k_sm, tip_affinity(land, land, beta=beta), residual, lam=lam)
        if self.solver_ == "cg":
            coef, self.cg_iterations_ = self._cg(keys, residual, beta, lam)
            return keys, coef
        if self.solver_ == "eigh":
            evals, evecs = kernel_eigh(keys, beta=beta)
            return keys, proker_eigh(evals, evecs, residual, lam=lam)
        gram = keys @ keys.T
        gram -= 1.0
        return keys, proker_cholesky(gram, residual, beta=beta, lam=lam)

    def _selection(self) -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
        if self.val_accuracy_ is None:
            return None
        betas = [float(self.beta)] if self.beta is not None else [float(b) for b in self.betas]
        lams = [float(self.lam)] if self.lam is not None else [float(v) for v in self.lams]
        grid = [{"beta": b, "lam": v} for b in betas for v in lams]
        return grid, {"beta": self.beta_, "lam": self.lam_}

    def _cg(
        self, keys: Tensor, residual: Tensor, beta: float, lam: float, x0: Tensor | None = None
    ) -> tuple[Tensor, int]:
        """:func:`proker_cg` with this method's tolerance, iteration cap, landmarks and seed."""
        return proker_cg(
            keys,
            residual,
            beta=beta,
            lam=lam,
            tol=self.tol,
            max_iter=self.max_iter,
            n_landmarks=min(self.n_landmarks, keys.shape[0]),
            seed=self.seed,
            x0=x0,
        )

    def _search(
        self,
        keys: Tensor,
        residual: Tensor,
        text: Tensor,
        val: FeatureSet,
        betas: list[float],
        lams: list[float],
    ) -> tuple[float, float, float]:
        """Grid search; returns (β, λ, accuracy %). Shared work is hoisted out of the λ loop."""
        xv = l2_normalize(val.features.to(self._device, keys.dtype))
        yv = val.labels.to(self._device)
        zv = self.scale * (xv @ text.T)
        counts = torch.zeros(len(betas), len(lams), dtype=torch.long)
        logits = torch.empty_like(zv)
        if self.solver_ == "nystrom":
            land = keys[self._landmarks(keys.shape[0]).to(keys.device)]
            a_sm, a_mm, a_vm = keys @ land.T - 1.0, land @ land.T - 1.0, xv @ land.T - 1.0
            m, c, f64 = land.shape[0], residual.shape[1], torch.float64
            # nystrom_coef, unrolled over preallocated buffers (reused for every (β, λ))
            k_sm, k_vm = torch.empty_like(a_sm), torch.empty_like(a_vm)
            h, factor = a_mm.new_empty(m, m, dtype=f64), a_mm.new_empty(m, m, dtype=f64)
            sol, coef = a_mm.new_empty(m, c, dtype=f64), residual.new_empty(m, c)
            for i, beta in enumerate(betas):
                torch.mul(a_sm, beta, out=k_sm).exp_()
                torch.mul(a_vm, beta, out=k_vm).exp_()
                k_mm = torch.mul(a_mm, beta).exp_().double()
                gram, rhs = (k_sm.T @ k_sm).double(), (k_sm.T @ residual).double()
                for j, lam in enumerate(lams):
                    torch.add(gram, k_mm, alpha=lam, out=h)
                    torch.cholesky_solve(rhs, psd_cholesky(h, out=factor), out=sol)
                    coef.copy_(sol).mul_(lam)
                    counts[i, j] = count_correct(torch.addmm(zv, k_vm, coef, out=logits), yv)
        elif self.solver_ == "cg":
            for i, beta in enumerate(betas):
                prev = None
                for j, lam in enumerate(lams):
                    coef, _ = self._cg(keys, residual, beta, lam, x0=prev)
                    prev = coef
                    counts[i, j] = count_correct(zv + kernel_matmul(xv, keys, coef, beta=beta), yv)
        else:
            gram = keys @ keys.T
            gram -= 1.0
            a_vs = xv @ keys.T - 1.0
            k_vs, work = torch.empty_like(a_vs), torch.empty_like(gram)
            for i, beta in enumerate(betas):
                torch.mul(a_vs, beta, out=k_vs).exp_()
                for j, lam in enumerate(lams):
                    coef = proker_cholesky(gram, residual, beta=beta, lam=lam, work=work)
                    counts[i, j] = count_correct(torch.addmm(zv, k_vs, coef, out=logits), yv)
        bi, li = first_best(counts)
        return betas[bi], lams[li], 100.0 * int(counts[bi, li]) / max(1, val.n)

    def _search_eigh(
        self,
        keys: Tensor,
        residual: Tensor,
        text: Tensor,
        val: FeatureSet,
        betas: list[float],
        lams: list[float],
    ) -> tuple[float, float, float, Tensor]:
        """The grid search by one eigendecomposition per β; returns (β, λ, accuracy %, α).

        With ``K_SS = U·diag(w)·Uᵀ``, the validation logits at every λ are
        ``z_val + (K_vS·U)·diag(λ/(w + λ))·(Uᵀ·R)``: per β, one :func:`kernel_eigh` and two
        products (``A = K_vS·U``, (Nv, M), and ``B = Uᵀ·R``, (M, C)); per λ, one (Nv, M)·(M, C)
        product. The first best point (β outer, λ inner, strict ``>``) is tracked as the
        search goes, and its α = ``U·diag(λ/(w + λ))·B`` is computed while its U is at hand,
        so no solve follows the search. Memory: one (M, M) matrix, the kernel and then its
        eigenvectors, besides LAPACK's workspace (:func:`kernel_eigh`).
        """
        xv = l2_normalize(val.features.to(self._device, keys.dtype))
        yv = val.labels.to(self._device)
        zv = self.scale * (xv @ text.T)
        counts = torch.zeros(len(betas), len(lams), dtype=torch.long)
        logits = torch.empty_like(zv)
        a_vs = xv @ keys.T - 1.0
        k_vs, buf = torch.empty_like(a_vs), keys.new_empty(keys.shape[0], keys.shape[0])
        best, coef = -1, residual.new_zeros(residual.shape)
        for i, beta in enumerate(betas):
            evals, evecs = kernel_eigh(keys, beta=beta, out=buf)
            a = torch.mul(a_vs, beta, out=k_vs).exp_() @ evecs
            b = evecs.T @ residual
            best_lam = None
            for j, lam in enumerate(lams):
                shrunk = b * (lam / (evals + lam))[:, None]
                counts[i, j] = count_correct(torch.addmm(zv, a, shrunk, out=logits), yv)
                if int(counts[i, j]) > best:
                    best, best_lam = int(counts[i, j]), lam
            if best_lam is not None:
                torch.mm(evecs, b * (best_lam / (evals + best_lam))[:, None], out=coef)
        bi, li = first_best(counts)
        return betas[bi], lams[li], 100.0 * int(counts[bi, li]) / max(1, val.n), coef

    def _logits(self, x: Tensor) -> Tensor:
        zs = self.scale * (x @ self.text_weights_.T)
        return zs + kernel_matmul(x, self.centers_, self.dual_coef_, beta=self.beta_)
