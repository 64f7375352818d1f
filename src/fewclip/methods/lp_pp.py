"""LP++: a linear probe blended with the text classifier (Huang et al., CVPR 2024).

"LP++: A Surprisingly Strong Linear Probe for Few-Shot CLIP". The class score is a visual linear
probe plus a learnable per-class multiple of the zero-shot text score,

    logits_ik = f_iᵀw_k + b_k + α_k·f_iᵀt_k

trained with full-batch cross-entropy by block-coordinate majorise–minimise steps whose sizes
come from Lipschitz bounds of the gradient, so there is no learning rate to search.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor
from tqdm.auto import tqdm

from fewclip.errors import InvalidValueError
from fewclip.functional import l2_normalize
from fewclip.methods._training import KeepBest, check_ranges
from fewclip.methods.base import Method, register
from fewclip.task import Task

__all__ = ["LPPlusPlus", "largest_eigenvalue"]


def _softmax_(logits: Tensor) -> Tensor:
    """Row softmax written over its input."""
    logits.sub_(logits.amax(dim=1, keepdim=True)).exp_()
    return logits.div_(logits.sum(dim=1, keepdim=True))


def largest_eigenvalue(x: Tensor, *, tol: float = 1e-10, max_iter: int = 10_000) -> float:
    """λ_max(xᵀx) for x (N, D), by power iteration on the smaller Gram matrix in float64.

    Starts from ``0.5 + u`` with ``u`` uniform in [0, 1) from a ``torch.Generator`` seeded 0 (an
    all-ones start misses λ_max whenever it is orthogonal to the top eigenvector, e.g. when it
    is another eigenvector; a fixed random one only on a set of measure zero); stops when the
    Rayleigh quotient changes by at most ``tol`` (relative).
    """
    x = x.double()
    gram = x.T @ x if x.shape[1] <= x.shape[0] else x @ x.T
    start = torch.rand(gram.shape[0], generator=torch.Generator().manual_seed(0), dtype=gram.dtype)
    v = (start + 0.5).to(gram.device)
    v /= v.norm()
    value = 0.0
    for _ in range(max_iter):
        w = gram @ v
        new = float(v @ w)
        norm = w.norm()
        if norm == 0:
            return 0.0
        v = w / norm
        if abs(new - value) <= tol * abs(new):
            return new
        value = new
    return value


@register("lp++")
class LPPlusPlus(Method):
    """LP++ (Huang et al., CVPR 2024) on L2-normalised features f and text weights t_k.

    ``logits = f·Wᵀ + b + α ∘ (f·Tᵀ)``, minimising the mean cross-entropy over the support rows
    with, as in the released code:

    - initialisation: ``w_k = Σ_{i∈k} f_i`` (class sums of the support images), ``b = 0`` and
      every ``α_k = 250·mean_{k′} mean_{i∈k′} f_iᵀt_{k′}`` (each class's images against its
      own text: the released ``calculate_init_alpha``);
    - (W, b): full-batch gradient steps with heavy-ball momentum 0.9 and step size
      ``4N / λ_max(FᵀF)`` (N rows of F);
    - α: every ``alpha_every`` epochs a gradient step of size
      ``N / (4·max_k Σ_i (f_iᵀt_k)²)``;
    - the epoch with the best ``task.val`` accuracy is kept (``>=``, the latest best, as the
      reference); without a validation set, the last epoch.

    Args:
        epochs: full-batch iterations (300 in the reference).
        alpha_every: epochs between two α steps (10).
        alpha_init_scale: the constant 250 of the α initialisation.
        momentum: heavy-ball momentum of the (W, b) steps.
        use_views: also train on every stored augmented view as extra rows (the reference uses
            one pass over the support images).
        seed: unused by the deterministic full-batch solver; kept for a uniform interface.
        dtype, device: compute precision (float16 trains in float32, then casts) and device.
        progress: show a progress bar over epochs.

    Attributes:
        coef_ (C, D) tensor: the visual weights W of the kept epoch.
        intercept_ (C,) tensor: the biases b of the kept epoch.
        text_coef_ (C,) tensor: the per-class multipliers α of the text score.
        text_weights_ (C, D) tensor: the task's L2-normalised text weights T.
        lr_w_ float: the step size of the (W, b) updates, ``4N / λ_max(FᵀF)``.
        lr_alpha_ float: the step size of the α updates, ``N / (4·max_k Σ_i (f_iᵀt_k)²)``.
        best_epoch_ int: the epoch kept (the best on ``task.val``; ``epochs`` without one).
        val_accuracy_ float or None: ``task.val`` accuracy (%) of the kept epoch; None
            without a validation set.
    """

    training_free = False
    uses_validation = True
    new_class_refusal = "its linear head has one weight row per training class"
    chooses_on_validation = frozenset({"epoch"})
    quick_params: ClassVar[Mapping[str, Any]] = {"epochs": 20}

    _state_tensors = ("coef_", "intercept_", "text_coef_", "text_weights_")
    _state_values = ("best_epoch_", "val_accuracy_", "lr_w_", "lr_alpha_")

    def __init__(
        self,
        *,
        epochs: int = 300,
        alpha_every: int = 10,
        alpha_init_scale: float = 250.0,
        momentum: float = 0.9,
        use_views: bool = False,
        seed: int = 1,
        dtype: str = "float32",
        device: str = "cpu",
        progress: bool = False,
    ):
        self.epochs = epochs
        self.alpha_every = alpha_every
        self.alpha_init_scale = alpha_init_scale
        self.momentum = momentum
        self.use_views = use_views
        self.seed = seed
        self.dtype = dtype
        self.device = device
        self.progress = progress

    def _work_dtype(self) -> torch.dtype:
        return torch.float64 if self._dtype == torch.float64 else torch.float32

    def _train_rows(self, task: Task) -> tuple[Tensor, Tensor]:
        s = task.support
        wd = self._work_dtype()
        x = l2_normalize(s.features.to(self._device, wd))
        y = s.labels.to(self._device)
        if self.use_views and s.views is not None:
            views = [l2_normalize(s.views[v].to(self._device, wd)) for v in range(s.n_views)]
            x = torch.cat([x, *views])
            y = y.repeat(1 + s.n_views)
        return x, y

    def _fit(self, task: Task) -> None:
        check_ranges(self, epochs="int>=0")
        if self.alpha_every < 1:
            raise InvalidValueError(
                f"alpha_every: expected a positive integer, found {self.alpha_every}"
            )
        if not 0.0 <= self.momentum < 1.0:
            raise InvalidValueError(f"momentum: expected a value in [0, 1), found {self.momentum}")
        wd = self._work_dtype()
        c = task.n_classes
        x, y = self._train_rows(task)
        n = x.shape[0]
        text = l2_normalize(task.text_weights.to(self._device, wd))
        z = x @ text.T  # fixed text similarities (N, C)
        counts = torch.bincount(y, minlength=c).to(wd).unsqueeze(1)
        images = torch.bincount(task.support.labels.to(self._device), minlength=c).to(wd)
        # w_k = Σ_{i∈k} f_i over the support images (= images_k · class mean of the rows)
        coef = x.new_zeros(c, x.shape[1]).index_add_(0, y, x) / counts * images.unsqueeze(1)
        intercept = x.new_zeros(c)
        class_sim = z.new_zeros(c, c).index_add_(0, y, z) / counts  # mean f·t_c over class k
        # each class with its own text: the released calculate_init_alpha's one-hot mask
        own = float(class_sim.diagonal().mean())
        text_coef = torch.full((c,), self.alpha_init_scale * own, dtype=wd)
        text_coef = text_coef.to(self._device)
        self.lr_w_ = 4.0 * n / largest_eigenvalue(x)
        self.lr_alpha_ = n / (4.0 * float((z * z).sum(0).max()))

        val = None
        if task.val is not None:
            xv = l2_normalize(task.val.features.to(self._device, wd))
            val = (xv, xv @ text.T, task.val.labels.to(self._device))
        # every per-epoch tensor is preallocated and updated in place: fresh (N, C) allocations
        # cost more than the arithmetic on a CPU
        logits = x.new_empty(n, c)
        grad_w = torch.empty_like(coef)
        buf_w, buf_b = torch.empty_like(coef), torch.empty_like(intercept)
        rows = torch.arange(n, device=self._device)
        vlogits = None if val is None else x.new_empty(val[0].shape[0], c)
        best = KeepBest(ties="last")
        if val is not None and vlogits is not None and self.epochs == 0:
            correct = self._correct(val, coef, intercept, text_coef, vlogits)
            best.offer(correct, 0, coef, intercept, text_coef)
        self.val_accuracy_: float | None = None
        for epoch in tqdm(range(1, self.epochs + 1), desc="lp++", disable=not self.progress):
            torch.addmm(intercept, x, coef.T, out=logits)
            g = _softmax_(logits.addcmul_(z, text_coef))
            g[rows, y] -= 1.0
            g.div_(n)  # ∂ mean CE / ∂ logits
            torch.mm(g.T, x, out=grad_w)
            grad_b = g.sum(0)
            if epoch % self.alpha_every == 0:
                text_coef = text_coef - self.lr_alpha_ * g.mul_(z).sum(0)
            if epoch == 1:
                buf_w.copy_(grad_w)
                buf_b.copy_(grad_b)
            else:
                torch.add(grad_w, buf_w, alpha=self.momentum, out=buf_w)
                torch.add(grad_b, buf_b, alpha=self.momentum, out=buf_b)
            coef.sub_(buf_w, alpha=self.lr_w_)
            intercept.sub_(buf_b, alpha=self.lr_w_)
            if val is not None and vlogits is not None:
                correct = self._correct(val, coef, intercept, text_coef, vlogits)
                best.offer(correct, epoch, coef, intercept, text_coef)
        self._val_history: list[tuple[int, float]] = []
        if val is not None:
            coef, intercept, text_coef = best.state
            self.best_epoch_ = best.epoch
            n_val = max(1, val[2].shape[0])
            self.val_accuracy_ = 100.0 * best.score / n_val
            self._val_history = [(e, c / n_val) for e, c in best.history]
        else:
            self.best_epoch_ = self.epochs
        self.coef_ = coef.to(self._dtype)
        self.intercept_ = intercept.to(self._dtype)
        self.text_coef_ = text_coef.to(self._dtype)
        self.text_weights_ = text.to(self._dtype)

    def _epoch_selection(self) -> tuple[list[tuple[int, float]], int, str, bool] | None:
        history = getattr(self, "_val_history", [])
        return (history, self.best_epoch_, "last", True) if history else None

    @staticmethod
    def _correct(
        val: tuple[Tensor, Tensor, Tensor],
        coef: Tensor,
        intercept: Tensor,
        text_coef: Tensor,
        out: Tensor,
    ) -> int:
        xv, zv, yv = val
        logits = torch.addmm(intercept, xv, coef.T, out=out).addcmul_(zv, text_coef)
        pred = logits.max(dim=1).indices  # the first maximum, as argmax, but faster on CPU
        return int((pred == yv).sum())

    def _logits(self, x: Tensor) -> Tensor:
        return x @ self.coef_.T + self.intercept_ + (x @ self.text_weights_.T) * self.text_coef_
