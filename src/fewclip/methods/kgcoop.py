"""KgCoOp: knowledge-guided context optimisation (Yao et al., CVPR 2023, "Visual-Language
Prompt Tuning with Knowledge-guided Context Optimization").

KgCoOp is CoOp (:mod:`fewclip.methods.coop`) with a regulariser that keeps the learned prompts'
text features near those of a hand-written prompt, so that the prompts keep CLIP's general
knowledge (the paper's remedy for CoOp's loss on unseen classes)::

    t_c  = g([SOS] v_1 … v_M name_c . [EOT]) / ‖·‖      the learned prompts' features
    w_c  = features of the hand-written prompt of class c, L2-normalised
    L    = mean CE(s · x̂ · tᵀ, y)  +  λ · (1 − (1/C) Σ_c cos(t_c, w_c))

For unit vectors ‖t_c − w_c‖² = 2 (1 − cos(t_c, w_c)), so the paper's
``λ · (1/C) Σ_c ‖t_c − w_c‖²`` is this loss at twice the weight; fewclip follows the released
code (``1 − mean cos``, weight ``W`` = 8).

Reference: htyao89/KgCoOp ``trainers/kgcoop.py`` (see the class docstring for the defaults and
the deliberate differences).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from fewclip.errors import InvalidValueError
from fewclip.methods.base import register
from fewclip.methods.coop import CoOp, PromptRun, check_template, handcrafted_features
from fewclip.task import Task

__all__ = ["KgCoOp"]


@register("kgcoop")
class KgCoOp(CoOp):
    """KgCoOp on cached image features (needs ``task.text_tower``).

    Args:
        weight: λ, the weight of ``1 − mean_c cos(t_c, w_c)`` (``TRAINER.COOP.W``: 8.0 in
            every released script; the code's own default is 1.0).
        template: the hand-written prompt ``w_c`` is pulled towards: ``None`` (default) uses
            the task's zero-shot classifier (``task.text_weights``, from the task's prompt
            set); a text with ``{}`` (e.g. ``"a photo of a {}."``) is encoded by the tower
            instead. The reference encodes one template per dataset (its
            ``CUSTOM_TEMPLATES``: ``"a photo of a {}, a type of pet."`` for Oxford Pets, ...).
        ctx_init: ``"a photo of a"``: the released configs' ``CTX_INIT: True``, which the
            code turns into that phrase (so M = 4); ``""`` starts from N(0, 0.02²) with
            ``n_ctx`` vectors.
        epochs: 100 (``vit_b16_ep100_ctxv1``, every shot count); ``"auto"`` takes CoOp's
            50/100/200 by shots.
        batch_size: 128 (the released config).
        n_ctx, csc, class_token_position, lr, momentum, weight_decay, warmup_epochs,
            warmup_lr, scale, trim, seed, dtype, device, progress: as :class:`CoOp`'s (SGD lr
            0.002, momentum 0.9, weight decay 5e-4, one warm-up epoch at 1e-5, cosine per
            epoch).

    Attributes:
        ctx_ (M, W) or (C, M, W) tensor: the learned context vectors.
        text_features_ (C, D) tensor: the L2-normalised text features of the learned prompts.
        scale_ float: the logit scale used.
        epochs_ int: the epochs trained.

    Differences from the reference, deliberate: those of :class:`CoOp` (float32 training,
    stored augmented views); the hand-written target defaults to the task's prompt set
    rather than one template per dataset (pass ``template`` for the reference's); the
    regulariser is applied in every precision (the reference's ``amp`` path drops it).
    """

    quick_params: ClassVar[Mapping[str, Any]] = {"epochs": 2}

    def __init__(
        self,
        *,
        weight: float = 8.0,
        template: str | None = None,
        n_ctx: int = 4,
        ctx_init: str = "a photo of a",
        csc: bool = False,
        class_token_position: str = "end",
        epochs: int | str = 100,
        lr: float = 2e-3,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        batch_size: int = 128,
        warmup_epochs: int = 1,
        warmup_lr: float = 1e-5,
        scale: float | None = None,
        trim: bool = True,
        seed: int = 1,
        dtype: str = "float32",
        device: str = "cpu",
        progress: bool = False,
    ):
        super().__init__(
            n_ctx=n_ctx,
            ctx_init=ctx_init,
            csc=csc,
            class_token_position=class_token_position,
            epochs=epochs,
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            batch_size=batch_size,
            warmup_epochs=warmup_epochs,
            warmup_lr=warmup_lr,
            scale=scale,
            trim=trim,
            seed=seed,
            dtype=dtype,
            device=device,
            progress=progress,
        )
        self.weight = weight
        self.template = template

    def _validate(self) -> None:
        super()._validate()
        w = self.weight
        if isinstance(w, bool) or not isinstance(w, numbers.Real) or not 0 <= float(w) < math.inf:
            raise InvalidValueError(f"weight: expected a non-negative number, found {w!r}")
        check_template(self.template)

    def _begin_training(self, task: Task, run: PromptRun) -> None:
        self._target = handcrafted_features(
            run.tower, task.classnames, self.template, task.text_weights
        )

    def _loss(self, run: PromptRun, x: Tensor, y: Tensor) -> Tensor:
        """``CE(s · x · tᵀ, y) + λ · (1 − mean_c t_c · w_c)`` (t and w unit rows)."""
        text = run.text()
        ce = torch.nn.functional.cross_entropy(self.scale_ * x @ text.T, y)
        return ce + self.weight * (1 - (text * self._target).sum(dim=1).mean())
