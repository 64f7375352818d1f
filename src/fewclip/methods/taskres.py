"""TaskRes (Yu et al., CVPR 2023, "Task Residual for Tuning Vision-Language Models").

The zero-shot text classifier t (C, D) is kept frozen and a task residual x (C, D), initialised
at zero, is learned on top of it:

    t'_k = t_k + α·x_k,        logits = scale · x̂ · normalise(t')ᵀ

with x̂ the L2-normalised image feature and α the residual scale (0.5 in the paper, 1.0 for
Flowers102). Only x is trained, with cross-entropy on the support images.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor
from tqdm.auto import tqdm

from fewclip.errors import InvalidValueError
from fewclip.functional import l2_normalize
from fewclip.methods._training import (
    DasslSchedule,
    FusedAdam,
    check_ranges,
    dassl_epoch,
    train_dtype,
)
from fewclip.methods.base import Method, register
from fewclip.task import Task

__all__ = ["TaskRes"]


def _nll_step(rows: int, dtype: torch.dtype) -> float:
    """``−1/rows`` in ``dtype``: the gradient ``nll_loss`` (mean) gives a row's label entry."""
    return float(-(torch.ones((), dtype=dtype) / rows))


@register("taskres")
class TaskRes(DasslSchedule, Method):
    """TaskRes: a learned residual on the zero-shot text classifier.

    ``t' = t + α·x`` with x (C, D) learned from zero, ``logits = scale·x̂·normalise(t')ᵀ``
    (Yu et al., CVPR 2023). Training follows the released configs: Adam (lr 2e-3; 2e-4 on
    ImageNet), weight decay 5e-4 (Dassl's default), batch 256, cosine schedule stepped per epoch
    after one warm-up epoch at constant 1e-5, 200 epochs for 8/16 shots (100 for 1/2/4), the last
    epoch kept. Each epoch draws one stored augmented view per support image instead of
    re-encoding images. The base classifier is the task's L2-normalised text weights (the
    reference adds the residual to the un-normalised mean prompt embedding, so the same α acts
    relatively more strongly here); ``base_norm`` rescales the base to recover that behaviour.

    Args:
        alpha: residual scale α (0.5 in the paper; 1.0 for Flowers102).
        epochs, lr, weight_decay, batch_size, warmup_epochs, warmup_lr: optimisation settings.
        base_norm: norm of the base classifier t (1: the unit-norm text weights).
        scale: logit scale (CLIP's exp(logit_scale) ≈ 100).
        seed: seed of shuffling and view draws.
        dtype, device: compute precision (float16 trains in float32) and device.
        progress: show a progress bar over epochs.

    Attributes:
        text_weights_ (C, D) tensor: the frozen base classifier t, the L2-normalised text
            weights times ``base_norm``.
        residual_ (C, D) tensor: the learned task residual x (zero when nothing was trained).
        alpha_ float: the residual scale α used.

    The validation set, when the task has one, is not used (the paper fixes every setting).
    """

    training_free = False
    uses_validation = False
    new_class_refusal = "its learned residual has one row per training class"
    quick_params: ClassVar[Mapping[str, Any]] = {"epochs": 5}

    _state_tensors = ("text_weights_", "residual_")
    _state_values = ("alpha_",)

    def __init__(
        self,
        *,
        alpha: float = 0.5,
        epochs: int = 200,
        lr: float = 2e-3,
        weight_decay: float = 5e-4,
        batch_size: int = 256,
        warmup_epochs: int = 1,
        warmup_lr: float = 1e-5,
        base_norm: float = 1.0,
        scale: float = 100.0,
        seed: int = 1,
        dtype: str = "float32",
        device: str = "cpu",
        progress: bool = False,
    ):
        self.alpha = alpha
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.warmup_epochs = warmup_epochs
        self.warmup_lr = warmup_lr
        self.base_norm = base_norm
        self.scale = scale
        self.seed = seed
        self.dtype = dtype
        self.device = device
        self.progress = progress

    def _validate(self) -> None:
        check_ranges(self, epochs="int>=0", batch_size="int>=1", lr="lr", warmup_lr="lr")
        if not self.base_norm > 0:
            raise InvalidValueError(f"base_norm: expected a positive value, found {self.base_norm}")
        if not math.isfinite(self.alpha):
            raise InvalidValueError(f"alpha: expected a finite residual scale, found {self.alpha}")

    def _classifier(self, residual: Tensor) -> Tensor:
        return l2_normalize(self.text_weights_.to(residual.dtype) + self.alpha_ * residual)

    def _fit(self, task: Task) -> None:
        self._validate()
        self.alpha_ = float(self.alpha)
        self.text_weights_ = self.base_norm * l2_normalize(self._to(task.text_weights))
        tdt = train_dtype(self._dtype)
        residual = torch.zeros(task.n_classes, task.dim, dtype=tdt, device=self._device)
        if self.epochs > 0 and self.alpha_ != 0:
            residual = self._train(task, residual)
        self.residual_ = residual.to(self._dtype)

    def _train(self, task: Task, residual: Tensor) -> Tensor:
        tdt = residual.dtype
        bank = task.support.view_bank()
        n_views, n = bank.shape[0], bank.shape[1]
        targets = task.support.labels.to(self._device)
        x_res = residual.clone()
        # torch.optim.Adam(fused=True)'s update, without the optimiser object's per-step work
        optim = FusedAdam(x_res, decoupled=False, weight_decay=self.weight_decay)
        g = torch.Generator().manual_seed(self.seed)
        base = self.text_weights_.to(tdt)
        # every stored view normalised once (a row's normalisation does not depend on the batch
        # it comes in), then each epoch's rows gathered at once, in training order
        unit = l2_normalize(bank.to(device=self._device, dtype=tdt))
        # The gradient of mean CE(scale·(x·t'ᵀ)/‖t'‖, y), t' = t + α·r, is computed by the
        # kernels autograd runs, in its order, without recording a graph: nll_loss's −1/B at
        # the labels, log_softmax's backward, then the quotient's (∂/∂num = g/‖t'‖,
        # ∂/∂‖t'‖ = Σ_rows −g·((num/‖t'‖)/‖t'‖)), the product's (×scale, then gᵀ·x), the norm's
        # (∂/∂t' += ∂/∂‖t'‖·t'/‖t'‖) and the sum's (×α). A zero row of t' makes the logits NaN
        # with either computation.
        alpha, scale = self.alpha_, self.scale
        grad = torch.empty_like(x_res)
        for epoch in tqdm(range(self.epochs), desc="taskres", disable=not self.progress):
            lr = self._lr_at(epoch)
            ep = dassl_epoch(n, n_views, self.batch_size, g)
            rows = ep.gather(unit)
            labels = targets[ep.order.to(self._device)]
            with torch.no_grad():
                for batch in ep.batches:
                    x = rows[batch]
                    b = x.shape[0]
                    w = torch.add(base, x_res, alpha=alpha)
                    num = torch.mm(x, w.T).mul_(scale)
                    norm = w.norm(dim=1)
                    logits = num / norm
                    nll = torch.zeros_like(logits)
                    nll.scatter_(1, labels[batch].unsqueeze(1), _nll_step(b, tdt))
                    dz = torch._log_softmax_backward_data(
                        nll, torch.log_softmax(logits, dim=1), 1, tdt
                    )
                    d_norm = (-dz * ((num / norm) / norm)).sum(0)
                    d_w = torch.mm((dz / norm).mul_(scale).T, x)
                    d_w += d_norm.unsqueeze(1) * (w / norm.unsqueeze(1))
                    optim.step(torch.mul(d_w, alpha, out=grad), lr)
        return x_res

    def _logits(self, x: Tensor) -> Tensor:
        return self.scale * (x @ self._classifier(self.residual_).to(x.dtype).T)
