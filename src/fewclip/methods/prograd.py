"""ProGrad: prompt-aligned gradient (Zhu et al., ICCV 2023, "Prompt-aligned Gradient for Prompt
Tuning").

ProGrad trains CoOp's context (:mod:`fewclip.methods.coop`) by cross-entropy, but only along
directions that do not contradict zero-shot CLIP. Each step computes two gradients of the
context: ``g_ce`` of the cross-entropy and ``g_kl`` of a distillation loss towards the
zero-shot predictions. Where they conflict, the part of ``g_ce`` along ``g_kl`` is removed::

    z   = s · x̂ · tᵀ                     student logits (the learned prompts' features t)
    z0  = s · x̂ · wᵀ                     zero-shot logits (hand-written prompts' features w)
    L_ce = mean CE(z, y)
    L_kl = mean_i Σ_c −softmax(z0_i / T)_c · log_softmax(z_i / T)_c · T²
    g    = g_ce                                     if g_ce · g_kl ≥ 0
         = g_ce − λ · (g_ce · ĝ_kl) ĝ_kl             otherwise,   ĝ_kl = g_kl / ‖g_kl‖

per parameter tensor, flattened (the context is the only one). ``L_kl`` is the cross-entropy
to the soft zero-shot targets, which has the gradient of ``KL(softmax(z0/T) ‖ softmax(z/T))``.
The optimiser then steps along ``g``; ``g_kl`` itself is never added.

Reference: BeierZhu/Prompt-align ``ProGrad.public/trainers/prograd.py`` and
``Dassl.ProGrad.pytorch``'s ``prograd_backward_and_update`` (see the class docstring for the
defaults and the deliberate differences).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from fewclip.errors import InvalidValueError
from fewclip.methods.base import register
from fewclip.methods.coop import (
    CoOp,
    PromptContext,
    PromptRun,
    check_template,
    handcrafted_features,
)
from fewclip.task import Task
from fewclip.text_tower import TextTower

__all__ = ["ProGrad", "prograd_direction"]


def prograd_direction(g: Tensor, g_ref: Tensor, lam: float = 1.0) -> Tensor:
    """ProGrad's update for one parameter tensor: ``g`` when it agrees with ``g_ref``
    (``g · g_ref ≥ 0``, both flattened), else ``g − lam · (g · ĝ_ref) ĝ_ref`` with
    ``ĝ_ref = g_ref / ‖g_ref‖`` (``lam = 1``: the part of ``g`` along ``g_ref`` removed, so the
    step no longer increases the reference loss to first order). A zero ``g_ref`` never
    conflicts."""
    dot = torch.dot(g.flatten(), g_ref.flatten())
    if not bool(dot < 0):
        return g
    return g - (lam * dot / torch.dot(g_ref.flatten(), g_ref.flatten())) * g_ref


def _nonnegative(name: str, value: object, *, positive: bool = False) -> None:
    """``value`` is a finite real number ≥ 0 (> 0 with ``positive``), else InvalidValueError."""
    ok = False
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        v = float(value)
        ok = (v > 0 if positive else v >= 0) and v < math.inf
    if not ok:
        what = "a positive number" if positive else "a non-negative number"
        raise InvalidValueError(f"{name}: expected {what}, found {value!r}")


@register("prograd")
class ProGrad(CoOp):
    """ProGrad on cached image features (needs ``task.text_tower``).

    Args:
        lam: λ, how much of ``g_ce``'s component along ``g_kl`` is removed when they conflict
            (``LOSS.LAMBDA``: 1.0 in the released scripts; the README uses 0.8 for 8 and 16
            shots on Flowers102, DTD and EuroSAT).
        temperature: T of the distillation loss (``LOSS.T`` = 1.0).
        template: the hand-written prompt of the zero-shot teacher: ``None`` (default) uses
            the task's zero-shot classifier (``task.text_weights``, from the task's prompt
            set); a text with ``{}`` is encoded by the tower instead. The reference uses one
            template per dataset (its ``CUSTOM_TEMPLATES``).
        n_ctx: 16 context vectors, as every released script.
        ctx_init: ``"a photo of a"``; with a phrase of k ≤ M words the context starts as
            M − k zero vectors followed by the phrase's k token embeddings and the prompt reads
            ``"X … X a photo of a name."`` (the released ``CTX_INIT: True``, whose phrase is the
            dataset's template without ``" {}."``); ``""`` starts from N(0, 0.02²).
        epochs: ``"auto"``: CoOp's 50 / 100 / 200 by shots (the README's 1-shot ``rn50_ep50``,
            2 and 4 shots ``rn50_ep100``, 8 and 16 shots ``rn50``).
        csc, class_token_position, lr, momentum, weight_decay, batch_size, warmup_epochs,
            warmup_lr, scale, trim, seed, dtype, device, progress: as :class:`CoOp`'s (SGD lr
            0.002, momentum 0.9, weight decay 5e-4, batch 32, one warm-up epoch at 1e-5, cosine
            per epoch). ``scale`` is the logit scale of the student and the teacher both.

    Attributes:
        ctx_ (M, W) or (C, M, W) tensor: the learned context vectors.
        text_features_ (C, D) tensor: the L2-normalised text features of the learned prompts.
        scale_ float: the logit scale used.
        epochs_ int: the epochs trained.

    Differences from the reference, deliberate: those of :class:`CoOp` (float32 training,
    stored augmented views); the teacher's text defaults to the task's prompt set rather than
    one template per dataset (pass ``template`` for the reference's). The released configs
    are RN50 only; the same schedule is used for every backbone. The reference's ``middle``
    position fails on an undefined name; here all three positions work.
    """

    quick_params: ClassVar[Mapping[str, Any]] = {"epochs": 2, "n_ctx": 4}

    def __init__(
        self,
        *,
        lam: float = 1.0,
        temperature: float = 1.0,
        template: str | None = None,
        n_ctx: int = 16,
        ctx_init: str = "a photo of a",
        csc: bool = False,
        class_token_position: str = "end",
        epochs: int | str = "auto",
        lr: float = 2e-3,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        batch_size: int = 32,
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
        self.lam = lam
        self.temperature = temperature
        self.template = template

    def _validate(self) -> None:
        super()._validate()
        _nonnegative("lam", self.lam)
        _nonnegative("temperature", self.temperature, positive=True)
        check_template(self.template)

    def _prompt_context(self, tower: TextTower, classnames: list[str]) -> PromptContext:
        return PromptContext(
            tower,
            classnames,
            n_ctx=self.n_ctx,
            init=self.ctx_init,
            position=self.class_token_position,
            keep_n_ctx=True,
        )

    def _begin_training(self, task: Task, run: PromptRun) -> None:
        self._teacher = handcrafted_features(
            run.tower, task.classnames, self.template, task.text_weights
        )

    def _step(self, opt: torch.optim.Optimizer, run: PromptRun, x: Tensor, y: Tensor) -> None:
        """Both gradients, then the step along :func:`prograd_direction` of each tensor."""
        logits = self.scale_ * x @ run.text().T
        t = float(self.temperature)
        with torch.no_grad():
            soft = F.softmax(self.scale_ * x @ self._teacher.T / t, dim=1)
        kl = -(soft * F.log_softmax(logits / t, dim=1)).sum(dim=1).mean() * t * t
        ce = F.cross_entropy(logits, y)
        g_kl = torch.autograd.grad(kl, run.params, retain_graph=True)
        g_ce = torch.autograd.grad(ce, run.params)
        for p, a, b in zip(run.params, g_ce, g_kl, strict=True):
            p.grad = prograd_direction(a, b, float(self.lam))
        opt.step()
