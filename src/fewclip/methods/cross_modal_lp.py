"""Cross-modal linear probe (Lin et al., CVPR 2023, "Multimodality Helps Unimodality").

CLIP maps images and text into one space, so the text embedding t_k of class k is used as one
more labelled training sample of class k, next to the few-shot images. A linear head W (C, D),
initialised with the zero-shot text classifier, is trained with cross-entropy on both:

    logits(x) = scale · x̂ · Wᵀ,   loss = CE over ½ images (x̂_i, y_i) and ½ texts (t̂_k, k)

with x̂ and t̂ L2-normalised (W itself is not re-normalised). WiSE-FT optionally interpolates
the trained head with the zero-shot one: W' = (1 − r)·W + r·normalise(W_zs).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor
from tqdm.auto import tqdm

from fewclip.errors import InvalidValueError
from fewclip.functional import count_correct, l2_normalize
from fewclip.methods._training import (
    FusedAdam,
    KeepBest,
    check_ranges,
    endless_shuffles,
    train_dtype,
    warmup_cosine_lr,
)
from fewclip.methods.base import Method, register
from fewclip.task import Task

__all__ = ["CrossModalLP"]

#: Training steps whose rows are gathered together (32-row batches: 4 MB of float32 rows).
_BLOCK_STEPS = 32


@register("cross-modal-lp")
class CrossModalLP(Method):
    """Cross-modal linear probe: text embeddings as extra training samples of a linear head.

    ``logits = scale·x̂·Wᵀ``, W (C, D) initialised at the zero-shot classifier and trained with
    cross-entropy on batches of half images (the support images and every stored augmented view,
    as separate samples) and half class text embeddings (Lin et al., CVPR 2023, linear head with
    zero-shot initialisation). Settings follow the released code: AdamW, a linear warm-up from
    1e-5 over 50 iterations then cosine decay over ``iters`` = 12,800 iterations, and early
    stopping on validation accuracy measured every 100 iterations (strict ``>``: the earliest
    best iterate is kept); without a validation set the last iterate is kept.

    The paper sweeps lr ∈ {1e-3, 1e-4}, weight decay ∈ {0, 1e-2, 1e-4} and batch size ∈ {8, 32}
    on the few-shot validation set; ``search=True`` runs that sweep (first best in that loop
    order), ``search=False`` (default) trains once with ``lr``, ``weight_decay`` and
    ``batch_size``.

    Args:
        lr, weight_decay, batch_size: the single configuration (``search=False`` or no val).
        search: sweep ``search_lr`` × ``search_weight_decay`` × ``search_batch_size`` on val.
        iters, warmup_iters, warmup_lr, eval_every: schedule and early-stopping cadence.
        text_ratio: fraction of each batch taken from the text samples (½ in the paper).
        wiseft_ratio: WiSE-FT interpolation r with the zero-shot head (0: the trained head).
        scale: logit scale (exp(4.60517) = 100 in the paper).
        seed: seed of the sample streams.
        dtype, device: compute precision (float16 trains in float32) and device.
        progress: show a progress bar over iterations.

    Attributes:
        coef_ (C, D) tensor: the head used for prediction (after WiSE-FT interpolation).
        zero_shot_ (C, D) tensor: the normalised zero-shot head it started from.
        lr_, weight_decay_ (float), batch_size_ (int): the configuration kept.
        best_iter_ (int): the kept iteration (0-based; ``iters`` without validation).
        val_accuracy_ (float or None): validation accuracy in % of the kept head; None
            without a validation set.

    Deviation: the reference uses one text sample per prompt template; a fewclip Task carries
    the template-averaged text classifier, so each class contributes one text sample (the same
    as the reference for the 10 datasets that use a single template).
    """

    training_free = False
    uses_validation = True
    new_class_refusal = "its linear head has one weight row per training class"
    chooses_on_validation = frozenset({"epoch"})
    quick_params: ClassVar[Mapping[str, Any]] = {"iters": 50, "eval_every": 10}

    _state_tensors = ("coef_", "zero_shot_")
    _state_values = ("lr_", "weight_decay_", "batch_size_", "best_iter_", "val_accuracy_")

    def __init__(
        self,
        *,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        batch_size: int = 32,
        search: bool = False,
        search_lr: Sequence[float] = (1e-3, 1e-4),
        search_weight_decay: Sequence[float] = (0.0, 1e-2, 1e-4),
        search_batch_size: Sequence[int] = (8, 32),
        iters: int = 12800,
        warmup_iters: int = 50,
        warmup_lr: float = 1e-5,
        eval_every: int = 100,
        text_ratio: float = 0.5,
        wiseft_ratio: float = 0.0,
        scale: float = 100.0,
        seed: int = 1,
        dtype: str = "float32",
        device: str = "cpu",
        progress: bool = False,
    ):
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.search = search
        self.search_lr = search_lr
        self.search_weight_decay = search_weight_decay
        self.search_batch_size = search_batch_size
        self.iters = iters
        self.warmup_iters = warmup_iters
        self.warmup_lr = warmup_lr
        self.eval_every = eval_every
        self.text_ratio = text_ratio
        self.wiseft_ratio = wiseft_ratio
        self.scale = scale
        self.seed = seed
        self.dtype = dtype
        self.device = device
        self.progress = progress

    def _validate(self) -> None:
        check_ranges(self, iters="int>=0", eval_every="int>=1", lr="lr", warmup_lr="lr")
        for rate in self.search_lr if self.search else ():
            if not 0 <= rate < math.inf:
                raise InvalidValueError(
                    f"search_lr: expected non-negative learning rates, found {list(self.search_lr)}"
                )
        sizes = [self.batch_size, *(self.search_batch_size if self.search else ())]
        if min(sizes) < 2:
            raise InvalidValueError(
                f"batch_size: expected at least 2 (images and texts), found {sizes}"
            )
        if not 0.0 <= self.text_ratio < 1.0:
            raise InvalidValueError(
                f"text_ratio: expected a value in [0, 1), found {self.text_ratio}"
            )
        if not 0.0 <= self.wiseft_ratio <= 1.0:
            raise InvalidValueError(
                f"wiseft_ratio: expected a value in [0, 1], found {self.wiseft_ratio}"
            )
        if self.search and not (
            self.search_lr and self.search_weight_decay and self.search_batch_size
        ):
            raise InvalidValueError(
                "search_lr, search_weight_decay and search_batch_size: expected at least one "
                f"value each with search=True, found {tuple(self.search_lr)}, "
                f"{tuple(self.search_weight_decay)} and {tuple(self.search_batch_size)}"
            )

    def _lr_at(self, it: int, lr: float) -> float:
        """:func:`~fewclip.methods._training.warmup_cosine_lr` with this probe's settings."""
        return warmup_cosine_lr(
            it, lr=lr, warmup_steps=self.warmup_iters, warmup_lr=self.warmup_lr, total=self.iters
        )

    def _fit(self, task: Task) -> None:
        self._validate()
        tdt = train_dtype(self._dtype)
        dev = self._device
        s = task.support
        stack = s.features[None] if s.views is None else torch.cat([s.features[None], s.views])
        images = l2_normalize(stack.to(dev, tdt)).reshape(-1, task.dim)  # plain + every view
        image_labels = s.labels.to(dev).repeat(stack.shape[0])
        zero_shot = l2_normalize(task.text_weights.to(dev, tdt))
        text_labels = torch.arange(task.n_classes, device=dev)
        val = None
        if task.val is not None:
            val = (l2_normalize(task.val.features.to(dev, tdt)), task.val.labels.to(dev))
        configs = [(float(self.lr), float(self.weight_decay), int(self.batch_size))]
        if self.search and val is not None:
            configs = [
                (float(lr), float(wd), int(bs))
                for lr in self.search_lr
                for wd in self.search_weight_decay
                for bs in self.search_batch_size
            ]
        best: tuple[float, Tensor, tuple[float, float, int], int, list] | None = None
        for cfg in configs:
            w, acc, it, history = self._train(
                images, image_labels, zero_shot, text_labels, val, *cfg, zero_shot.clone()
            )
            if best is None or acc > best[0]:
                best = (acc, w, cfg, it, history)
        assert best is not None
        acc, w, (self.lr_, self.weight_decay_, self.batch_size_), self.best_iter_, history = best
        self._val_history: list[tuple[int, float]] = history
        self.val_accuracy_: float | None = 100.0 * acc if val is not None else None
        self.zero_shot_ = zero_shot.to(self._dtype)
        r = float(self.wiseft_ratio)
        self.coef_ = ((1 - r) * w + r * zero_shot).to(self._dtype)

    def _train(
        self,
        images: Tensor,
        image_labels: Tensor,
        texts: Tensor,
        text_labels: Tensor,
        val: tuple[Tensor, Tensor] | None,
        lr: float,
        weight_decay: float,
        batch_size: int,
        init: Tensor,
    ) -> tuple[Tensor, float, int, list[tuple[int, float]]]:
        """Returns (head, its val accuracy in [0, 1] or −1 without val, its iteration, every
        (iteration, val accuracy) scored)."""
        n_text = int(batch_size * self.text_ratio)
        n_image = batch_size - n_text
        g = torch.Generator().manual_seed(self.seed)
        # the two endless shuffles' draws for the whole schedule, at once
        image_idx, text_idx = endless_shuffles(
            (images.shape[0], texts.shape[0]), (n_image, n_text), self.iters, g
        )
        dt, dev, c = images.dtype, images.device, texts.shape[0]
        # The gradient of mean CE(scale·x·Wᵀ, y) is computed by the kernels autograd runs, in
        # its order: nll_loss's −1/B at the labels, log_softmax's backward, ×scale, then
        # (∂L/∂z)ᵀ·x (as autograd, not xᵀ·(∂L/∂z): on tiny probabilities that product meets
        # subnormal numbers and runs several times slower); no graph is recorded, and no loss
        # value (it is never read).
        w = init
        optim = FusedAdam(w, decoupled=True, weight_decay=weight_decay)
        grad = torch.empty_like(w)
        x = images.new_empty(batch_size, images.shape[1])
        z = images.new_empty(batch_size, c)
        step = float(-(torch.ones((), dtype=dt) / batch_size))
        best = KeepBest(ties="first")
        bar = tqdm(total=self.iters, desc="cross-modal-lp", disable=not self.progress)
        for start in range(0, self.iters, _BLOCK_STEPS):
            stop = min(self.iters, start + _BLOCK_STEPS)
            ii, ti = image_idx[start:stop].to(dev), text_idx[start:stop].to(dev)
            ys = torch.cat([image_labels[ii], text_labels[ti]], dim=1)
            nll = torch.zeros(stop - start, batch_size, c, dtype=dt, device=dev)
            nll.scatter_(2, ys.unsqueeze(2), step)
            for it in range(start, stop):
                torch.index_select(images, 0, ii[it - start], out=x[:n_image])
                if n_text:
                    torch.index_select(texts, 0, ti[it - start], out=x[n_image:])
                torch.mm(x, w.T, out=z).mul_(self.scale)
                dz = torch._log_softmax_backward_data(
                    nll[it - start], torch.log_softmax(z, dim=1), 1, dt
                )
                torch.mm(dz.mul_(self.scale).T, x, out=grad)
                optim.step(grad, self._lr_at(it, lr))
                if val is not None and it % self.eval_every == 0:
                    best.offer(_accuracy(val, w), it, w)
            bar.update(stop - start)
        bar.close()
        if val is None or self.iters == 0:
            best.keep(self.iters, w)
        head = best.state[0]
        return head, (-1.0 if val is None else _accuracy(val, head)), best.epoch, best.history

    def _epoch_selection(self) -> tuple[list[tuple[int, float]], int, str, bool] | None:
        history = getattr(self, "_val_history", [])
        if not history or self.iters == 0:
            return None
        return history, self.best_iter_, "first", float(self.wiseft_ratio) == 0.0

    def _logits(self, x: Tensor) -> Tensor:
        return self.scale * (x @ self.coef_.T)


def _accuracy(val: tuple[Tensor, Tensor], w: Tensor) -> float:
    """Top-1 accuracy in [0, 1] of the head ``w`` on normalised validation features."""
    return count_correct(val[0] @ w.T, val[1]) / len(val[1])
