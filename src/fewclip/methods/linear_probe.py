"""Linear-probe CLIP (Radford et al., 2021): logistic regression on L2-normalised features.

Multinomial logistic regression with an unpenalised intercept, minimising scikit-learn's
objective ``½‖W‖² + C·Σᵢ CE(W·xᵢ + b, yᵢ)`` with full-batch L-BFGS. The inverse regularisation
strength ``C`` is swept on the validation set when there is one (the CLIP paper sweeps λ = 1/C
on validation). Each fit of the sweep starts where the previous two fits point: the last
solution moved along the secant between them in log C (see :func:`path_start`), which takes
fewer L-BFGS evaluations than starting from the last solution alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from fewclip.errors import InvalidValueError
from fewclip.functional import count_correct, l2_normalize
from fewclip.methods.base import Method, register
from fewclip.task import Task

__all__ = ["LinearProbe", "SoftmaxObjective", "fit_logistic_regression", "path_start"]


class SoftmaxObjective:
    """``mean CE(x·Wᵀ + b, y) + penalty·‖W‖²`` and its gradient, for full-batch solvers.

    Calling it with ``(W, b)`` returns the loss and writes the gradient into ``W.grad`` and
    ``b.grad`` (which must exist), without autograd: with ``z = x·Wᵀ + b`` and
    ``p = softmax(z)``, ``∂/∂z = (p − onehot(y)) / N``, ``∂/∂W = (∂/∂z)ᵀ·x + 2·penalty·W``
    and ``∂/∂b = Σᵢ (∂/∂z)ᵢ``. One (N, C) buffer serves every call, so an L-BFGS run
    allocates no (N, C) temporaries per evaluation.
    """

    def __init__(self, x: Tensor, y: Tensor, n_classes: int, penalty: float):
        self.x, self.penalty = x, penalty
        self.labels = y[:, None]
        self.rows = torch.arange(len(y), device=x.device)
        self.scores = x.new_empty(len(y), n_classes)

    def __call__(self, w: Tensor, b: Tensor) -> Tensor:
        n = len(self.rows)
        z = torch.addmm(b, self.x, w.T, out=self.scores)
        top = z.amax(dim=1, keepdim=True)
        picked = z.gather(1, self.labels)
        z.sub_(top).exp_()
        total = z.sum(dim=1, keepdim=True)
        loss = (total.log() + top - picked).mean() + self.penalty * w.square().sum()
        z.div_(total)
        z[self.rows, self.labels[:, 0]] -= 1.0
        torch.addmm(w, z.T, self.x, beta=2.0 * self.penalty, alpha=1.0 / n, out=w.grad)
        torch.sum(z, dim=0, out=b.grad).div_(n)
        return loss


def fit_logistic_regression(
    x: Tensor,
    y: Tensor,
    n_classes: int,
    *,
    C: float,
    init: tuple[Tensor, Tensor] | None = None,
    max_iter: int = 500,
    tol: float = 1e-6,
) -> tuple[Tensor, Tensor]:
    """Minimise ``½‖W‖² + C·Σᵢ CE(W·xᵢ + b, yᵢ)``; returns ``(W (C, D), b (C,))``.

    The objective is divided by ``C·N`` for conditioning (same minimiser) and evaluated by
    :class:`SoftmaxObjective`. L-BFGS with a strong-Wolfe line search, a history of 20 pairs
    and a unit initial step; stops when the gradient's largest entry falls below ``tol``, the
    loss changes by less than 1e-12, or after ``max_iter`` iterations.
    """
    if C <= 0:
        raise InvalidValueError(
            f"C: expected a positive inverse regularisation strength, found {C}"
        )
    n, d = x.shape
    w0, b0 = init if init is not None else (x.new_zeros(n_classes, d), x.new_zeros(n_classes))
    w, b = w0.detach().clone(), b0.detach().clone()
    w.grad, b.grad = torch.empty_like(w), torch.empty_like(b)
    optim = torch.optim.LBFGS(
        [w, b],
        lr=1,
        max_iter=max_iter,
        tolerance_grad=tol,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )
    objective = SoftmaxObjective(x, y, n_classes, 1.0 / (2.0 * C * n))
    optim.step(lambda: objective(w, b))
    w.grad = b.grad = None
    return w, b


def path_start(
    path: Sequence[tuple[float, Tensor, Tensor]], C: float
) -> tuple[Tensor, Tensor] | None:
    """The warm start for a fit at ``C`` from the fits ``(C_i, W_i, b_i)`` of a sweep so far.

    None for the first fit; the last solution after one fit; otherwise the last solution
    moved along the secant of the last two in log C, by at most one secant step:
    ``W = W₁ + r·(W₁ − W₀)`` with ``r = min(1, log(C/C₁) / log(C₁/C₀))`` (and ``r = 0``
    when ``C₁ = C₀``). The regularisation path is smooth in log C, so on an evenly spaced
    grid this lands closer to the next optimum than the last solution does.
    """
    if not path:
        return None
    c1, w1, b1 = path[-1]
    if len(path) == 1 or path[-2][0] == c1:
        return w1, b1
    c0, w0, b0 = path[-2]
    r = min(1.0, math.log(C / c1) / math.log(c1 / c0))
    return w1 + r * (w1 - w0), b1 + r * (b1 - b0)


@register("linear-probe")
class LinearProbe(Method):
    """Linear probe on L2-normalised image features.

    Args:
        C: inverse L2 strength; ``None`` sweeps ``Cs`` on ``task.val`` (first best wins) and
            falls back to ``default_C`` without a validation set.
        Cs: the sweep, fitted in ascending order, each fit warm-started by :func:`path_start`.
        default_C: C used when there is nothing to sweep on.
        use_views: also train on the stored augmented views (as extra samples); the CLIP paper's
            probe uses the plain features only.
        max_iter: L-BFGS iteration cap per fit.
        dtype, device: compute precision and device.

    Attributes:
        coef_ (C, D) tensor: the weights W of the logistic regression.
        intercept_ (C,) tensor: the unpenalised biases b.
        C_ float: the inverse L2 strength used (``C``, the sweep's best or ``default_C``).
        val_accuracy_ float or None: ``task.val`` accuracy (%) of ``C_``; None when no sweep ran.
    """

    training_free = False
    uses_validation = True
    new_class_refusal = "its linear head has one weight row per training class"
    chooses_on_validation = frozenset({"search"})
    quick_params: ClassVar[Mapping[str, Any]] = {"Cs": (1.0, 10.0)}

    _state_tensors = ("coef_", "intercept_")
    _state_values = ("C_", "val_accuracy_")

    def __init__(
        self,
        *,
        C: float | None = None,
        Cs: Sequence[float] = (0.1, 0.316, 1.0, 3.16, 10.0, 31.6, 100.0, 316.0, 1000.0),
        default_C: float = 10.0,
        use_views: bool = False,
        max_iter: int = 500,
        dtype: str = "float32",
        device: str = "cpu",
    ):
        self.C = C
        self.Cs = Cs
        self.default_C = default_C
        self.use_views = use_views
        self.max_iter = max_iter
        self.dtype = dtype
        self.device = device

    def _train_set(self, task: Task) -> tuple[Tensor, Tensor]:
        s = task.support
        x, y = self._to(s.features), s.labels.to(self._device)
        if self.use_views and s.views is not None:
            x = torch.cat([x, *self._to(s.views)])
            y = y.repeat(1 + s.n_views)
        return l2_normalize(x), y

    def _selection(self) -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
        if self.val_accuracy_ is None:
            return None
        return [{"C": float(c)} for c in sorted(self.Cs)], {"C": self.C_}

    def _fit(self, task: Task) -> None:
        x, y = self._train_set(task)
        c = task.n_classes
        self.val_accuracy_: float | None = None
        if self.C is not None or task.val is None:
            self.C_ = float(self.C if self.C is not None else self.default_C)
            self.coef_, self.intercept_ = fit_logistic_regression(
                x, y, c, C=self.C_, max_iter=self.max_iter
            )
            return
        xv = l2_normalize(self._to(task.val.features))
        yv = task.val.labels.to(self._device)
        best = -1.0
        path: list[tuple[float, Tensor, Tensor]] = []
        for cval in sorted(self.Cs):
            init = path_start(path, cval)
            w, b = fit_logistic_regression(x, y, c, C=cval, init=init, max_iter=self.max_iter)
            path = [*path[-1:], (cval, w, b)]
            acc = 100.0 * count_correct(xv @ w.T + b, yv) / len(yv)
            if acc > best:
                best, self.C_, self.coef_, self.intercept_ = acc, float(cval), w, b
        self.val_accuracy_ = best

    def _logits(self, x: Tensor) -> Tensor:
        return x @ self.coef_.T + self.intercept_
