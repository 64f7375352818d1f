"""GDA: Gaussian discriminant analysis on CLIP features (Wang et al., ICLR 2024).

"A Hard-to-Beat Baseline for Training-free CLIP-based Adaptation". Every augmented view of every
support image is L2-normalised and treated as one sample x of class y. With the class means μ_k
and the shared precision matrix P, the linear discriminant is ``x·Wᵀ + b`` with
``w_k = P·μ_k`` and ``b_k = log p_k − ½·μ_kᵀ·P·μ_k`` (uniform priors p_k = 1/C), added to the
zero-shot logits with a weight α.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from fewclip.errors import InvalidValueError
from fewclip.functional import count_correct_over_alpha, first_best, l2_normalize, psd_cholesky
from fewclip.methods.base import Method, register
from fewclip.task import FeatureSet, Task

__all__ = ["GDA", "class_means", "shared_precision", "within_class_scatter"]

_COVARIANCES = ("ks", "ledoit-wolf", "oas", "empirical")


def _normalise_into(out: Tensor, view: Tensor) -> Tensor:
    """``view / ‖view‖`` (rows) written into the preallocated ``out`` (no (N, D) temporaries)."""
    out.copy_(view)
    return out.div_(torch.linalg.vector_norm(out, dim=1, keepdim=True))


def class_means(views: Tensor, labels: Tensor, n_classes: int, *, dtype: torch.dtype) -> Tensor:
    """Means (C, D) of the L2-normalised views (V, N, D), pooled over views, per class.

    Each view is normalised on its own (``x / ‖x‖``) before averaging, one view at a time so that
    no (V, N, D) copy is made.
    """
    n, d = views.shape[1], views.shape[2]
    sums = torch.zeros(n_classes, d, dtype=dtype, device=views.device)
    buf = torch.empty(n, d, dtype=dtype, device=views.device)
    for v in range(views.shape[0]):
        sums.index_add_(0, labels, _normalise_into(buf, views[v]))
    counts = torch.bincount(labels, minlength=n_classes).to(dtype) * views.shape[0]
    return sums / counts.unsqueeze(1)


def within_class_scatter(
    views: Tensor, labels: Tensor, means: Tensor, *, fourth: bool = False
) -> tuple[Tensor, Tensor | None]:
    """Pooled within-class scatter ``S = Σᵢ cᵢcᵢᵀ`` (D, D), ``cᵢ = xᵢ − μ_{yᵢ}``, over every view.

    Two passes (means first, then centred samples), one view at a time. With ``fourth=True`` also
    returns ``Q = Σᵢ (cᵢ∘cᵢ)(cᵢ∘cᵢ)ᵀ``, which the Ledoit–Wolf shrinkage amount needs.
    """
    n, d = views.shape[1], views.shape[2]
    scatter = torch.zeros(d, d, dtype=means.dtype, device=means.device)
    q = torch.zeros_like(scatter) if fourth else None
    centred = torch.empty(n, d, dtype=means.dtype, device=means.device)
    class_of = means.index_select(0, labels)
    for v in range(views.shape[0]):
        _normalise_into(centred, views[v]).sub_(class_of)
        scatter.addmm_(centred.T, centred)
        if q is not None:
            centred.mul_(centred)
            q.addmm_(centred.T, centred)
    return scatter, q


def _spd_inverse(a: Tensor) -> Tensor:
    """``a⁻¹`` for a symmetric positive (semi-)definite ``a``, through its Cholesky factor
    (``functional.psd_cholesky``: a growing jitter if rounding made ``a`` slightly
    indefinite); cholesky_solve against I is an order of magnitude faster than
    cholesky_inverse on CPU."""
    eye = torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
    try:
        factor = psd_cholesky(a.clone())
    except torch.linalg.LinAlgError:
        raise InvalidValueError(
            "gda: the shared covariance of the support cannot be inverted (too few distinct "
            "samples for its dimension). Use the paper's estimator (covariance='ks', CLI: "
            "--param covariance=ks), augmented views (--views 10) or more shots."
        ) from None
    return torch.cholesky_solve(eye, factor)


def shared_precision(
    scatter: Tensor, n_samples: int, *, covariance: str = "ks", fourth: Tensor | None = None
) -> Tensor:
    """The shared precision matrix P (D, D) from the pooled within-class scatter S = Σ cᵢcᵢᵀ.

    ``covariance``:

    - ``"ks"`` (the paper's estimator): with Σ̂ = S/(n − 1), ``P = D·((n − 1)·Σ̂ + tr(Σ̂)·I)⁻¹
      = D·(S + tr(S)/(n − 1)·I)⁻¹``.
    - ``"ledoit-wolf"``: the Ledoit–Wolf shrinkage ``(1 − s)·E + s·(tr(E)/D)·I`` of the
      covariance ``E = S/n`` of the (assumed centred) samples, inverted; as
      ``sklearn.covariance.ledoit_wolf(c, assume_centered=True)``. The amount s needs
      ``fourth = Σᵢ (cᵢ∘cᵢ)(cᵢ∘cᵢ)ᵀ`` (``within_class_scatter(..., fourth=True)``).
    - ``"oas"``: the Oracle Approximating Shrinkage of E (``sklearn.covariance.oas``), inverted.
    - ``"empirical"``: ``(S/(n − 1))⁺`` (pseudo-inverse; singular when n ≤ D).
    """
    d = scatter.shape[0]
    eye = torch.eye(d, dtype=scatter.dtype, device=scatter.device)
    if covariance == "ks":
        reg = torch.trace(scatter) / max(n_samples - 1, 1)
        return d * _spd_inverse(scatter + reg * eye)
    if covariance == "empirical":
        return torch.linalg.pinv(scatter / max(n_samples - 1, 1), hermitian=True)
    emp = scatter / n_samples
    mu = float(torch.trace(emp)) / d
    if covariance == "ledoit-wolf":
        if fourth is None:
            raise InvalidValueError(
                "fourth: the Ledoit-Wolf shrinkage needs the fourth-moment matrix"
            )
        beta = float(torch.sum(fourth / n_samples - emp * emp)) / n_samples
        delta = float(torch.sum((emp - mu * eye) ** 2))
        beta = min(beta, delta)  # scikit-learn caps β first: an isotropic E (δ = 0) gets s = 0
        shrink = 0.0 if beta == 0 else beta / delta
    elif covariance == "oas":
        a = float(torch.mean(emp * emp))
        den = (n_samples + 1) * (a - mu**2 / d)
        shrink = 1.0 if den == 0 else min((a + mu**2) / den, 1.0)
    else:
        raise InvalidValueError(f"covariance: expected one of {_COVARIANCES}, found {covariance!r}")
    shrunk = (1 - shrink) * emp + shrink * mu * eye
    return _spd_inverse(shrunk)


@register("gda")
class GDA(Method):
    """Training-free Gaussian discriminant analysis (Wang et al., ICLR 2024).

    For L2-normalised x::

        logits = scale·x·Tᵀ + α·(x·Wᵀ + b),   w_k = P·μ_k,   b_k = log(1/C) − ½·μ_kᵀ·P·μ_k

    μ_k is the mean of the L2-normalised augmented views of class k (``task.support.views``,
    or the plain features when there are none), and P the shared precision matrix estimated
    from all centred views with the paper's shrinkage ``P = D·((n−1)·Σ̂ + tr(Σ̂)·I)⁻¹``
    (n = number of views × images, Σ̂ the pooled within-class covariance). α is chosen on
    ``task.val`` from ``alphas`` (first best, as the reference loop with strict ``>``;
    all α at once through ``functional.count_correct_over_alpha``); without a validation set,
    ``default_alpha`` is used.

    Args:
        alpha: a fixed α (no search) when given.
        alphas: the validation grid, the paper's {1e-4, …, 100}.
        default_alpha: α when there is no validation set; the reference starts its search from
            0.1 and keeps it when nothing is better. Not tuned on real data: pass ``alpha`` for
            your own ``val-free`` setting.
        covariance: ``"ks"`` (the paper), ``"ledoit-wolf"``, ``"oas"`` or ``"empirical"``
            (see ``shared_precision``).
        use_views: estimate from the stored augmented views (the paper, 10 views); ``False``
            uses the plain support features.
        scale: zero-shot logit scale (100 as in the reference).
        dtype, device: compute precision and device (float16 statistics are computed in
            float32, then cast).

    Attributes:
        coef_ (C, D) tensor: the discriminant weights, ``w_k = P·μ_k``.
        intercept_ (C,) tensor: the discriminant biases, ``b_k = log(1/C) − ½·μ_kᵀ·P·μ_k``.
        text_weights_ (C, D) tensor: the task's L2-normalised text weights T.
        alpha_ float: the weight α of the discriminant (``alpha``, searched or
            ``default_alpha``).
        val_accuracy_ float or None: ``task.val`` accuracy (%) at ``alpha_``; None when no
            search ran.
    """

    training_free = True
    uses_validation = True
    new_class_refusal = "its class means are estimated from the training classes' images"
    chooses_on_validation = frozenset({"search"})

    _state_tensors = ("text_weights_", "coef_", "intercept_")
    _state_values = ("alpha_", "val_accuracy_")

    def __init__(
        self,
        *,
        alpha: float | None = None,
        alphas: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0),
        default_alpha: float = 0.1,
        covariance: str = "ks",
        use_views: bool = True,
        scale: float = 100.0,
        dtype: str = "float32",
        device: str = "cpu",
    ):
        self.alpha = alpha
        self.alphas = alphas
        self.default_alpha = default_alpha
        self.covariance = covariance
        self.use_views = use_views
        self.scale = scale
        self.dtype = dtype
        self.device = device

    def _stats_dtype(self) -> torch.dtype:
        return torch.float64 if self._dtype == torch.float64 else torch.float32

    def _fit(self, task: Task) -> None:
        if self.covariance not in _COVARIANCES:
            raise InvalidValueError(
                f"covariance: expected one of {_COVARIANCES}, found {self.covariance!r}"
            )
        if self.alpha is None and not len(self.alphas):
            raise InvalidValueError("alphas: expected at least one value to search, found none")
        sd = self._stats_dtype()
        c = task.n_classes
        views = task.support.view_bank() if self.use_views else task.support.features[None]
        views = views.to(self._device)
        labels = task.support.labels.to(self._device)
        n = views.shape[0] * views.shape[1]
        means = class_means(views, labels, c, dtype=sd)
        scatter, fourth = within_class_scatter(
            views, labels, means, fourth=self.covariance == "ledoit-wolf"
        )
        if not float(torch.trace(scatter)) > 0:
            raise InvalidValueError(
                "gda: the support has no within-class variation (one image per class and no "
                "augmented views, or identical rows), so the shared covariance cannot be "
                "estimated. Give augmented views (CLI: --views 10; Python: FeatureSet(..., "
                "views=...)) or at least two images per class."
            )
        precision = shared_precision(scatter, n, covariance=self.covariance, fourth=fourth)
        coef = means @ precision  # P is symmetric: row k is (P·μ_k)ᵀ
        intercept = math.log(1.0 / c) - 0.5 * (coef * means).sum(1)
        self.coef_ = coef.to(self._dtype)
        self.intercept_ = intercept.to(self._dtype)
        self.text_weights_ = l2_normalize(self._to(task.text_weights))
        self.val_accuracy_: float | None = None
        if self.alpha is not None:
            self.alpha_ = float(self.alpha)
        elif task.val is None:
            self.alpha_ = float(self.default_alpha)
        else:
            self._search(task.val)

    def _selection(self) -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
        if self.alpha is not None or not self.val_accuracy_:
            return None  # fixed α, no validation, or no grid point right (default α kept)
        return [{"alpha": float(a)} for a in self.alphas], {"alpha": self.alpha_}

    def _search(self, val: FeatureSet) -> None:
        x = l2_normalize(val.features.to(self._device, self._stats_dtype()))
        y = val.labels.to(self._device)
        base = self.scale * (x @ self.text_weights_.to(x.dtype).T)
        extra = x @ self.coef_.to(x.dtype).T + self.intercept_.to(x.dtype)
        grid = [float(a) for a in self.alphas]
        alphas = torch.tensor(grid, dtype=x.dtype, device=x.device)
        counts = count_correct_over_alpha(base, extra, y, alphas)
        (best,) = first_best(counts)
        # the reference keeps its starting value when no grid point classifies anything
        self.alpha_ = grid[best] if int(counts[best]) > 0 else float(self.default_alpha)
        self.val_accuracy_ = 100.0 * int(counts[best]) / max(1, val.n)

    def _logits(self, x: Tensor) -> Tensor:
        zs = self.scale * (x @ self.text_weights_.T)
        return zs + self.alpha_ * (x @ self.coef_.T + self.intercept_)
