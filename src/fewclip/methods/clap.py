"""ZS-LP and CLAP (Silva-Rodríguez et al., CVPR 2024): validation-free linear probes.

"A Closer Look at the Few-Shot Adaptation of Large Vision-Language Models". ZS-LP is a cosine
linear probe whose class prototypes start at the zero-shot text weights; CLAP adds a
class-adaptive penalty that keeps each prototype close to its text weight, weighted by how
well zero-shot already classifies that class on the support set. Both use one fixed
configuration for every task, so they need no validation set (the ``val-free`` protocol).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor
from tqdm.auto import tqdm

from fewclip.errors import InvalidValueError
from fewclip.functional import l2_normalize
from fewclip.methods._training import DasslSchedule, check_ranges, pooled_epoch
from fewclip.methods.base import Method, register
from fewclip.task import Task

__all__ = ["CLAP", "ZSLP", "clap_penalty_weights"]


def clap_penalty_weights(
    views: Tensor, labels: Tensor, text_weights: Tensor, *, scale: float = 100.0
) -> Tensor:
    """CLAP's λ_k: zero-shot confidence in class k on its own support samples.

    ``λ_k = mean_{i: yᵢ=k} softmax(scale·x̂ᵢ·Tᵀ)_k`` over every L2-normalised view x̂ᵢ
    (views (V, N, D), labels (N,), text_weights (C, D) L2-normalised) → (C,).
    """
    c, n = text_weights.shape[0], views.shape[1]
    total = torch.zeros(c, dtype=text_weights.dtype, device=text_weights.device)
    x = torch.empty(n, views.shape[2], dtype=text_weights.dtype, device=text_weights.device)
    logits = torch.empty(n, c, dtype=x.dtype, device=x.device)
    for v in range(views.shape[0]):
        x.copy_(views[v])
        x.div_(torch.linalg.vector_norm(x, dim=1, keepdim=True))
        torch.mm(x, text_weights.T, out=logits)
        _softmax_(logits.mul_(scale))
        total.index_add_(0, labels, logits.gather(1, labels.unsqueeze(1)).squeeze(1))
    counts = torch.bincount(labels, minlength=c).to(total.dtype) * views.shape[0]
    return total / counts


def _softmax_(logits: Tensor) -> Tensor:
    """Row softmax written over its input (no (N, C) temporaries in hot loops)."""
    logits.sub_(logits.amax(dim=1, keepdim=True)).exp_()
    return logits.div_(logits.sum(dim=1, keepdim=True))


@register("zs-lp")
class ZSLP(DasslSchedule, Method):
    """Zero-shot-initialised cosine linear probe (ZS-LP, as in Silva-Rodríguez et al., CVPR 2024).

    ``logits = scale·x̂·ŵᵀ`` with L2-normalised features x̂ and prototypes ŵ_k = w_k/‖w_k‖,
    ``w_k`` initialised at ``init_norm·t_k`` (t_k the unit-norm text weight) and trained with
    cross-entropy. The released
    configuration, fixed for every task: SGD (lr 0.1, momentum 0.9, no weight decay), batch
    256, 300 epochs, cosine schedule stepped per epoch after one warm-up epoch at 1e-5, the
    last epoch kept. Each epoch draws its rows without replacement from the pool of every
    stored augmented view of every support image, as the released code draws from its 20
    cached passes: ``N // 256`` batches of 256 rows, or one batch of 256 rows (at most the
    pool) below 256 images (:func:`fewclip.methods._training.pooled_epoch`). ``task.val`` is
    never used.

    Args:
        epochs, lr, momentum, weight_decay, batch_size, warmup_epochs, warmup_lr: training
            settings (reference defaults).
        scale: logit scale (CLIP's exp(logit_scale) = 100).
        init_norm: norm of the initial prototypes (and of CLAP's anchors), ``init_norm·t_k``.
            The reference starts from CLIP's raw (un-normalised) text embeddings; since the
            logits only see ŵ, this norm sets the effective step (the angular step scales as
            lr/‖w‖²) and CLAP's penalty (∝ ‖w‖²). The Task keeps unit-norm text weights only,
            so the norm is a parameter; 10 is our estimate of the order of raw CLIP text norms
            (not measured on real weights). With 1, lr 0.1 is far too large.
        seed: seed of shuffling and view draws.
        dtype, device: compute precision (float16 trains in float32, then casts) and device.
        progress: show a progress bar over epochs.

    Attributes:
        prototypes_ (C, D) tensor: the trained class prototypes w, not normalised (the logits
            use ŵ_k = w_k/‖w_k‖).
    """

    training_free = False
    uses_validation = False
    new_class_refusal = "its class prototypes are trained for the training classes only"
    quick_params: ClassVar[Mapping[str, Any]] = {"epochs": 5}

    _state_tensors: ClassVar[tuple[str, ...]] = ("prototypes_",)

    def __init__(
        self,
        *,
        epochs: int = 300,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        batch_size: int = 256,
        warmup_epochs: int = 1,
        warmup_lr: float = 1e-5,
        scale: float = 100.0,
        init_norm: float = 10.0,
        seed: int = 1,
        dtype: str = "float32",
        device: str = "cpu",
        progress: bool = False,
    ):
        self.epochs = epochs
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.warmup_epochs = warmup_epochs
        self.warmup_lr = warmup_lr
        self.scale = scale
        self.init_norm = init_norm
        self.seed = seed
        self.dtype = dtype
        self.device = device
        self.progress = progress

    def _work_dtype(self) -> torch.dtype:
        return torch.float64 if self._dtype == torch.float64 else torch.float32

    def _validate(self) -> None:
        check_ranges(self, epochs="int>=0", batch_size="int>=1", lr="lr", warmup_lr="lr")
        if not self.init_norm > 0:
            raise InvalidValueError(f"init_norm: expected a positive norm, found {self.init_norm}")

    def _penalty_weights(self, task: Task, text: Tensor) -> Tensor | None:
        return None

    def _fit(self, task: Task) -> None:
        self._validate()
        wd = self._work_dtype()
        text = l2_normalize(task.text_weights.to(self._device, wd))
        penalty = self._penalty_weights(task, text)
        init = text * self.init_norm
        prototypes = self._train(task, init, penalty) if self.epochs > 0 else init
        self.prototypes_ = prototypes.to(self._dtype)

    def _train(self, task: Task, text: Tensor, penalty: Tensor | None) -> Tensor:
        """SGD on ``CE(scale·x̂·ŵᵀ, y) + mean_k λ_k‖w_k − t_k‖²`` (no penalty when λ is None).

        ``text`` (C, D) is both the starting point and the anchor t (``init_norm`` included).

        The gradient is written out (no autograd graph), which is several times faster for
        these small steps: with G = (softmax(logits) − onehot(y))/B,
        ``∂/∂ŵ = scale·Gᵀx̂``, ``∂/∂w_k = (∂/∂ŵ_k − ŵ_k·(ŵ_k·∂/∂ŵ_k))/‖w_k‖`` and the penalty adds
        ``(2/C)·λ_k·(w_k − t_k)``. Updates follow ``torch.optim.SGD`` (momentum without
        dampening, coupled weight decay).
        """
        bank = task.support.view_bank()
        n_views, n, d = bank.shape
        c, bs = text.shape[0], min(self.batch_size, n_views * n)
        # every stored view normalised once (a row's normalisation does not depend on the batch
        # it comes in), and the label of each flat row v·N + i
        unit = bank.reshape(n_views * n, d).to(device=text.device, dtype=text.dtype, copy=True)
        unit.div_(torch.linalg.vector_norm(unit, dim=1, keepdim=True))
        row_labels = task.support.labels.to(self._device).repeat(n_views)
        w = text.clone()
        # every per-step tensor is preallocated: fresh large allocations are the bottleneck of
        # these small steps on a CPU (page faults in every thread)
        x, logits = text.new_empty(bs, d), text.new_empty(bs, c)
        w_hat, grad, buf = torch.empty_like(w), torch.empty_like(w), torch.zeros_like(w)
        tmp, norm, radial = torch.empty_like(w), text.new_empty(c, 1), text.new_empty(c, 1)
        rows = torch.arange(bs, device=self._device)
        pen = text_pen = None
        if penalty is not None:
            pen = (2.0 / c) * penalty.unsqueeze(1)
            text_pen = text * pen
        first = True
        g = torch.Generator().manual_seed(self.seed)
        for epoch in tqdm(range(self.epochs), desc=self.name, disable=not self.progress):
            lr = self._lr_at(epoch)
            ep = pooled_epoch(n, n_views, self.batch_size, g)
            for batch in ep.batches:
                flat = ep.rows[batch].to(unit.device)
                b = len(flat)
                xb, lb = x[:b], logits[:b]
                torch.index_select(unit, 0, flat, out=xb)
                torch.linalg.vector_norm(w, dim=1, keepdim=True, out=norm)
                torch.div(w, norm, out=w_hat)
                torch.mm(xb, w_hat.T, out=lb)
                _softmax_(lb.mul_(self.scale))
                lb[rows[:b], row_labels[flat.to(self._device)]] -= 1.0
                # fold scale/B and 1/‖w_k‖ into G's columns: grad = ∂/∂ŵ / ‖w‖ after the mm
                lb.mul_(norm.T.reciprocal().mul_(self.scale / b))
                torch.mm(lb.T, xb, out=grad)
                torch.sum(torch.mul(grad, w_hat, out=tmp), dim=1, keepdim=True, out=radial)
                grad.addcmul_(w_hat, radial, value=-1.0)
                if pen is not None and text_pen is not None:
                    grad.addcmul_(w, pen).sub_(text_pen)
                if self.weight_decay:
                    grad.add_(w, alpha=self.weight_decay)
                if first:
                    buf.copy_(grad)
                    first = False
                else:
                    torch.add(grad, buf, alpha=self.momentum, out=buf)
                w.add_(buf, alpha=-lr)
        return w

    def _logits(self, x: Tensor) -> Tensor:
        return self.scale * (x @ l2_normalize(self.prototypes_).T)


@register("clap")
class CLAP(ZSLP):
    """CLAP: ZS-LP with a class-adaptive penalty towards the text weights (CVPR 2024).

    Minimises ``CE(scale·x̂·ŵᵀ, y) + (1/C)·Σ_k λ_k·‖w_k − t_k‖²`` with the ZS-LP training
    configuration; the anchors (and starting points) are ``t_k = init_norm·`` unit text
    weight, and ``λ_k = mean_{i: yᵢ=k} softmax(scale·x̂ᵢ·Tᵀ)_k`` is the zero-shot confidence
    in class k on its own support views (``clap_penalty_weights``): classes that the text
    already recognises stay close to it. λ is fixed during training (the paper's main variant;
    the augmented-Lagrangian update is not implemented). No validation set is used.

    Args: as ``ZSLP``.

    Attributes: as ``ZSLP``'s, plus:
        penalty_weights_ (C,) tensor: the penalty weights λ_k, zero-shot confidence in each
            class on its own support views.
    """

    _state_tensors: ClassVar[tuple[str, ...]] = ("prototypes_", "penalty_weights_")

    def _penalty_weights(self, task: Task, text: Tensor) -> Tensor:
        lam = clap_penalty_weights(
            task.support.view_bank().to(self._device),
            task.support.labels.to(self._device),
            text,
            scale=self.scale,
        )
        self.penalty_weights_ = lam.to(self._dtype)
        return lam
