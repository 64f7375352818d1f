"""CoCoOp: conditional context optimisation (Zhou et al., CVPR 2022, "Conditional Prompt
Learning for Vision-Language Models").

CoCoOp is CoOp (:mod:`fewclip.methods.coop`) with a context that depends on the image: a small
meta-net maps the image feature to one token-space vector π(x) that is added to every context
vector, so each image gets its own prompts::

    x̂       = x / ‖x‖
    π(x̂)    = W₂ · ReLU(W₁ · x̂ + b₁) + b₂           W₁: D → D/16, W₂: D/16 → W (the meta-net)
    t_c(x)  = g([SOS] (v_1 + π) … (v_M + π) name_c . [EOT]) / ‖·‖
    logits_c(x) = s · x̂ · t_c(x),       L = mean CE(logits, y)

The context v_1 … v_M and the meta-net are trained; CLIP stays frozen.

**Cost.** The text features depend on the image, so they cannot be computed once: every image
runs the text tower over its C prompts, in training (forward and backward, B·C prompts per
batch of B images) and in prediction (N·C prompts for N queries, e.g. 50 million for ImageNet's
50,000 test images and 1,000 classes). Prediction runs them in passes of at most
``prompt_batch`` prompts (⌊prompt_batch / C⌋ images a pass, at least one), so memory stays
bounded by one pass's activations whatever N is.

**Prediction needs the tower.** A fitted CoCoOp keeps the task's text tower. One loaded from
disk needs it attached (:meth:`~fewclip.methods.base.Method.attach_text_tower`;
``Adapter.load_backbone`` does it), and it cannot be exported as the feature-level head every
other method exports to (``export_refusal``).

Reference: KaiyangZhou/CoOp ``trainers/cocoop.py`` with Dassl's trainer (see the class
docstring for the defaults and the deliberate differences).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from fewclip.errors import DamagedFileError, InvalidTypeError, InvalidValueError
from fewclip.functional import l2_normalize
from fewclip.methods._training import check_ranges
from fewclip.methods.base import REFIT_HINT, register
from fewclip.methods.coop import CoOp, PromptContext, PromptRun, initial_context
from fewclip.task import Task
from fewclip.text_tower import TextTower

__all__ = ["CoCoOp", "meta_net", "meta_net_init"]

_META = ("meta_w1_", "meta_b1_", "meta_w2_", "meta_b2_")


def meta_net_init(d_in: int, d_out: int, generator: torch.Generator) -> list[Tensor]:
    """``[W₁, b₁, W₂, b₂]`` of the meta-net Linear(D → H) · ReLU · Linear(H → W) with
    H = max(1, D // 16), as ``torch.nn.Linear`` initialises them: every entry uniform in
    ±1/√fan_in (Kaiming-uniform with a = √5 for the weights), drawn from ``generator``."""
    hidden = max(1, d_in // 16)
    out = []
    for fan_in, fan_out in ((d_in, hidden), (hidden, d_out)):
        bound = 1 / math.sqrt(fan_in)
        out.append((torch.rand(fan_out, fan_in, generator=generator) * 2 - 1) * bound)
        out.append((torch.rand(fan_out, generator=generator) * 2 - 1) * bound)
    return out


def meta_net(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
    """(B, W) context shifts ``π = W₂ · ReLU(W₁ · x + b₁) + b₂`` of image features (B, D)."""
    return F.linear(F.relu(F.linear(x, w1, b1)), w2, b2)


@register("cocoop")
class CoCoOp(CoOp):
    """CoCoOp on cached image features (needs ``task.text_tower``, to fit and to predict).

    Args:
        n_ctx: context vectors M when ``ctx_init`` is ``""`` (16 in the code's defaults).
        ctx_init: ``"a photo of a"`` (the paper's config ``vit_b16_c4_ep10_batch1_ctxv1``:
            M = 4); ``""`` starts from N(0, 0.02²).
        epochs: 10; batch_size: **1** (the paper's config; each step runs the tower over the
            C prompts of one image).
        lr, momentum, weight_decay, warmup_epochs, warmup_lr: SGD 0.002, momentum 0.9, weight
            decay 5e-4 on the context and the meta-net; one warm-up epoch at 1e-5, then a
            cosine per epoch (Dassl's schedule, as CoOp).
        prompt_batch: at prediction, at most this many prompts per text-tower pass
            (⌊prompt_batch / C⌋ images, at least one); bounds memory, not the result.
        scale, trim, seed, dtype, device, progress: as :class:`CoOp`'s. ``seed`` also draws
            the meta-net's initial weights.

    Attributes:
        ctx_ (M, W) tensor: the learned context vectors.
        meta_w1_ (H, D) tensor: the meta-net's first weight (H = max(1, D // 16)).
        meta_b1_ (H,) tensor: its first bias.
        meta_w2_ (W, H) tensor: its second weight.
        meta_b2_ (W,) tensor: its second bias.
        scale_ float: the logit scale used.
        epochs_ int: the epochs trained.

    Differences from the reference, deliberate: training runs in float32 (the reference
    keeps CLIP, the context and the meta-net in float16); each epoch draws one stored
    augmented view per image; a batch's B·C prompts run through the tower in one pass
    instead of one image at a time (the same loss); the meta-net's hidden width is at least
    1 (the reference's D // 16 is 0 below D = 16). As in the reference, the class name sits at
    the end, there is one shared context, and the last epoch is kept (no validation).
    """

    predicts_with_text_tower = True
    export_refusal = (
        "its text features depend on each image (the meta-net shifts the prompt context per "
        "image), so every query runs the text encoder over its C prompts, and the exported "
        "model holds only the image encoder and a feature-level head; score with fewclip "
        "(fewclip predict, fewclip serve) instead"
    )
    quick_params: ClassVar[Mapping[str, Any]] = {"epochs": 1, "batch_size": 4}

    _state_tensors = ("ctx_", *_META)
    _state_values = ("scale_", "epochs_")
    meta_w1_: Tensor
    meta_b1_: Tensor
    meta_w2_: Tensor
    meta_b2_: Tensor

    def __init__(
        self,
        *,
        n_ctx: int = 4,
        ctx_init: str = "a photo of a",
        epochs: int = 10,
        lr: float = 2e-3,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        batch_size: int = 1,
        warmup_epochs: int = 1,
        warmup_lr: float = 1e-5,
        prompt_batch: int = 8192,
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
        self.prompt_batch = prompt_batch

    # -- fitting ----------------------------------------------------------------------------
    def _validate(self) -> None:
        check_ranges(self, epochs="int>=0", prompt_batch="int>=1")
        super()._validate()

    def _epochs_for(self, shots: int) -> int:
        return int(self.epochs)

    def _initial_params(self, prompts: PromptContext, tower: TextTower, task: Task) -> list[Tensor]:
        """``[ctx, W₁, b₁, W₂, b₂]``: the context as CoOp's, then the meta-net."""
        ctx = initial_context(prompts, tower, seed=self.seed)
        meta = meta_net_init(task.dim, tower.width, torch.Generator().manual_seed(self.seed))
        return [ctx, *(t.to(tower.device) for t in meta)]

    def _loss(self, run: PromptRun, x: Tensor, y: Tensor) -> Tensor:
        """``mean CE(s · x̂ · t(x)ᵀ, y)`` with each image's own prompts."""
        return F.cross_entropy(self._scores(run.tower, run.prompts, run.params, x), y)

    def _scores(
        self, tower: TextTower, prompts: PromptContext, params: Sequence[Tensor], x: Tensor
    ) -> Tensor:
        """(B, C) logits of B L2-normalised images: their shifted contexts, the B·C prompts
        through the tower in one pass, and each image against its own C text features."""
        ctx, w1, b1, w2, b2 = params
        shifted = ctx.unsqueeze(0) + meta_net(x, w1, b1, w2, b2).unsqueeze(1)  # (B, M, W)
        emb, eot = prompts.assemble_per_image(shifted)
        text = l2_normalize(tower.encode(emb, eot, trim=self.trim).float())
        text = text.reshape(x.shape[0], prompts.n_classes, -1)
        return self.scale_ * torch.einsum("bd,bcd->bc", x, text)

    def _keep(self, run: PromptRun) -> None:
        ctx, *meta = (self._to(p.detach()) for p in run.params)
        self.ctx_ = ctx
        for name, value in zip(_META, meta, strict=True):
            setattr(self, name, value)
        self._text_tower: TextTower | None = run.tower
        self._prompts = run.prompts

    # -- the text tower ---------------------------------------------------------------------
    def _attach_text_tower(self, tower: Any) -> None:
        self._text_tower, self._prompts = tower, self._prompts_for(tower, self.classnames_)

    def _prompts_for(self, tower: Any, classnames: list[str]) -> PromptContext:
        """The prompts of ``classnames`` around the fitted context, through ``tower`` (checked
        against the fitted shapes)."""
        if not isinstance(tower, TextTower):
            raise InvalidTypeError(
                f"tower: expected a fewclip.text_tower.TextTower (backbone.text_tower()), found "
                f"{type(tower).__name__}"
            )
        if tower.embed_dim != self.n_features_in_ or tower.width != self.ctx_.shape[-1]:
            raise InvalidValueError(
                f"tower: features of dimension {tower.embed_dim} and token width {tower.width}, "
                f"but {self.name} was fitted with {self.n_features_in_} and "
                f"{self.ctx_.shape[-1]} (a tower of another backbone?)"
            )
        prompts = PromptContext(
            tower, classnames, n_ctx=self.n_ctx, init=self.ctx_init, position="end"
        )
        if prompts.n_ctx != self.ctx_.shape[0]:
            raise InvalidValueError(
                f"tower: its prompts hold {prompts.n_ctx} context vectors, the fitted context "
                f"{self.ctx_.shape[0]}"
            )
        return prompts

    def _for_classes(
        self, classnames: list[str], text_weights: Tensor, text_tower: TextTower | None
    ) -> None:
        """The learned context and meta-net with the new names' prompts, through
        ``text_tower`` (or the tower this method already holds): each image's C' prompts are
        assembled and encoded when it is scored, as CoCoOp evaluates new classes."""
        tower = text_tower if text_tower is not None else getattr(self, "_text_tower", None)
        if tower is None:
            raise InvalidValueError(
                f"text_tower: {self.name} builds the new classes' prompts through the text "
                "encoder; pass text_tower=backbone.text_tower() (the backbone it was fitted with)"
            )
        self._text_tower, self._prompts = tower, self._prompts_for(tower, classnames)

    def _load_extra_state(self, tensors: dict[str, Tensor]) -> None:
        """No tower yet (``attach_text_tower``); the loaded shapes are checked here instead of
        by a probe query."""
        self._text_tower = None
        d = self.n_features_in_
        m, w = self.ctx_.shape if self.ctx_.ndim == 2 else (0, 0)
        h = self.meta_w1_.shape[0] if self.meta_w1_.ndim == 2 else 0
        want = {"ctx_": (m, w), "meta_w1_": (h, d), "meta_b1_": (h,)}
        want.update({"meta_w2_": (w, h), "meta_b2_": (w,)})
        for name, shape in want.items():
            got = tuple(getattr(self, name).shape)
            if got != shape or 0 in shape:
                raise DamagedFileError(
                    f"{name}: shape {got} does not fit a CoCoOp on {d} features; {REFIT_HINT}"
                )

    # -- prediction -------------------------------------------------------------------------
    def _logits(self, x: Tensor) -> Tensor:
        tower = getattr(self, "_text_tower", None)
        if tower is None:
            raise InvalidValueError(
                f"{self.name} scores each image through the text tower, and this one has none: "
                "call attach_text_tower(backbone.text_tower()) with the backbone it was fitted "
                "on (fewclip.Adapter.load_backbone does it)"
            )
        on = {"device": tower.device, "dtype": torch.float32}
        params = [getattr(self, k).to(**on) for k in self._state_tensors]
        if not len(x):  # split() of no rows still gives one empty part
            return self._to(x.new_zeros(0, len(self.classnames_)))
        per_pass = max(1, int(self.prompt_batch) // len(self.classnames_))
        with torch.no_grad():
            parts = [
                self._scores(tower, self._prompts, params, part)
                for part in x.to(**on).split(per_pass)
            ]
        return self._to(torch.cat(parts))
