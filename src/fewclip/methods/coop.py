"""CoOp: context optimisation (Zhou et al., IJCV 2022, "Learning to Prompt for Vision-Language
Models").

CoOp replaces the hand-written words of a prompt by M learned vectors in the text encoder's
token-embedding space and trains them, with the whole of CLIP frozen, by cross-entropy on the
few-shot images. For class c the prompt is::

    end:     [SOS] v_1 … v_M  name_c .  [EOT]
    middle:  [SOS] v_1 … v_⌊M/2⌋  name_c  v_⌊M/2⌋+1 … v_M .  [EOT]
    front:   [SOS] name_c  v_1 … v_M .  [EOT]

with one context (v_1 … v_M) shared by all classes, or one per class (``csc``). The text
feature of each prompt is ``t_c = g(prompt_c)`` (the text tower), and::

    logits(x) = s · (x / ‖x‖) · (t / ‖t‖)ᵀ,      L = mean CE(logits, y)

with ``s`` the model's logit scale. Only the image encoder's *cached* features are used: the
text tower runs in every training step (forward and backward through C prompts); prediction
uses the final text features, computed once after training.

Reference: KaiyangZhou/CoOp ``trainers/coop.py`` with Dassl's trainer (see the class
docstring for the defaults and the deliberate differences).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor
from tqdm.auto import tqdm

from fewclip.errors import InvalidValueError
from fewclip.functional import l2_normalize
from fewclip.methods._training import check_ranges, dassl_epoch, dassl_lr
from fewclip.methods.base import Method, register
from fewclip.task import Task
from fewclip.text_tower import TextTower

__all__ = [
    "CoOp",
    "PromptContext",
    "PromptRun",
    "coop_epochs",
    "handcrafted_features",
    "initial_context",
]

_POSITIONS = ("end", "middle", "front")


def coop_epochs(shots: int) -> int:
    """The released schedule's epochs by shots (COOP.md): 50 for 1 shot, 100 for 2 and 4,
    200 for 8 and more. (The reference runs ImageNet at 50 for every shot count: pass
    ``epochs=50`` there.)"""
    if shots <= 1:
        return 50
    return 100 if shots <= 4 else 200


class PromptContext:
    """The fixed parts of C prompts around a learned context (CoOp's ``PromptLearner``).

    Built once per task from the tower: the token embeddings of ``"X X … X name."`` (M ``X``
    placeholders, or the ``init`` phrase) give the SOS prefix, each class's suffix (name, ``.``,
    EOT, padding) and, for ``middle`` and ``front``, each name's token count.

    With an ``init`` phrase of k words, M = k (CoOp, CoCoOp, KgCoOp) and ``init_vectors`` holds
    the phrase's k token embeddings; with ``keep_n_ctx`` M stays ``n_ctx`` ≥ k, the prompt reads
    ``"X … X phrase name."`` and ``init_vectors`` is zero in the first M − k slots and the
    phrase's embeddings in the last k (ProGrad's start). As in the references, k counts
    space-separated words, not tokenizer tokens.
    """

    def __init__(
        self,
        tower: TextTower,
        classnames: list[str],
        *,
        n_ctx: int,
        init: str,
        position: str,
        keep_n_ctx: bool = False,
    ) -> None:
        names = [c.replace("_", " ") for c in classnames]
        phrase = init.replace("_", " ").strip()
        words = len(phrase.split(" ")) if phrase else 0
        if phrase and keep_n_ctx and words > n_ctx:
            raise InvalidValueError(
                f"n_ctx: expected at least the {words} words of ctx_init {init!r}, found {n_ctx}"
            )
        if phrase and not keep_n_ctx:
            n_ctx = words  # as the reference: words, not BPE tokens
        pad = " ".join(["X"] * (n_ctx - words))
        prefix_text = f"{pad} {phrase}".strip()
        tokens = tower.tokenize([f"{prefix_text} {name}." for name in names]).to(tower.device)
        with torch.no_grad():
            emb = tower.embed(tokens)
        self.n_ctx = n_ctx
        self.position = position
        self.eot = tower.eot_index(tokens)
        self.prefix = emb[:, :1]
        self.suffix = emb[:, 1 + n_ctx :]
        self.init_vectors: Tensor | None = None
        if phrase:
            with torch.no_grad():
                init_tokens = tower.tokenize([phrase]).to(tower.device)
                vectors = tower.embed(init_tokens)[0, 1 : 1 + words]
                self.init_vectors = torch.cat(
                    [vectors.new_zeros(n_ctx - words, vectors.shape[1]), vectors]
                )
        name_tokens = tower.tokenize(names).to(tower.device)
        self.name_lens = (tower.eot_index(name_tokens) - 1).tolist()

    @property
    def n_classes(self) -> int:
        return int(self.prefix.shape[0])

    def assemble(self, ctx: Tensor) -> Tensor:
        """(C, L, W) prompt embeddings with the context ``ctx`` ((M, W) shared or (C, M, W))."""
        c = self.prefix.shape[0]
        if ctx.ndim == 2:
            ctx = ctx.unsqueeze(0).expand(c, -1, -1)
        ctx = ctx.to(self.prefix.dtype)
        if self.position == "end":
            return torch.cat([self.prefix, ctx, self.suffix], dim=1)
        half = self.n_ctx // 2
        rows = []
        for i, n in enumerate(self.name_lens):
            pre, name, post = (
                self.prefix[i : i + 1],
                self.suffix[i : i + 1, :n],
                self.suffix[i : i + 1, n:],
            )
            if self.position == "middle":
                parts = [pre, ctx[i : i + 1, :half], name, ctx[i : i + 1, half:], post]
            else:
                parts = [pre, name, ctx[i : i + 1], post]
            rows.append(torch.cat(parts, dim=1))
        return torch.cat(rows)

    def assemble_per_image(self, ctx: Tensor) -> tuple[Tensor, Tensor]:
        """The prompts of B images with one context each (CoCoOp), class token at the end:
        ``ctx`` (B, M, W) → ((B·C, L, W) embeddings, (B·C,) EOT positions), image-major (row
        ``b·C + c`` is image b's prompt of class c)."""
        if self.position != "end":
            raise InvalidValueError(
                f"class_token_position: per-image contexts support 'end' only, found "
                f"{self.position!r}"
            )
        b, c = ctx.shape[0], self.n_classes
        ctx = ctx.to(self.prefix.dtype)
        parts = [
            self.prefix.unsqueeze(0).expand(b, -1, -1, -1),
            ctx.unsqueeze(1).expand(-1, c, -1, -1),
            self.suffix.unsqueeze(0).expand(b, -1, -1, -1),
        ]
        emb = torch.cat(parts, dim=2)
        return emb.reshape(b * c, *emb.shape[2:]), self.eot.repeat(b)


@dataclass
class PromptRun:
    """What one fit of a prompt learner trains through: the frozen ``tower``, the ``prompts``
    around the context, the trainable tensors ``params`` (the context first) and ``trim``."""

    tower: TextTower
    prompts: PromptContext
    params: list[Tensor]
    trim: bool = True

    @property
    def ctx(self) -> Tensor:
        return self.params[0]

    def text(self, ctx: Tensor | None = None) -> Tensor:
        """(C, D) L2-normalised float32 text features of the C prompts with ``ctx`` (default:
        the trained context)."""
        ctx = self.ctx if ctx is None else ctx
        out = self.tower.encode(self.prompts.assemble(ctx), self.prompts.eot, trim=self.trim)
        return l2_normalize(out.float())


def initial_context(
    prompts: PromptContext, tower: TextTower, *, seed: int, n_classes: int | None = None
) -> Tensor:
    """The float32 starting context on the tower's device: (M, W), or (C, M, W) class-specific
    with ``n_classes``. The phrase's vectors (``prompts.init_vectors``) when there is one, else
    N(0, 0.02²) drawn from a generator seeded with ``seed`` (``nn.init.normal_(std=0.02)``)."""
    m, w = prompts.n_ctx, tower.width
    shape = (m, w) if n_classes is None else (n_classes, m, w)
    if prompts.init_vectors is not None:
        return prompts.init_vectors.float().expand(shape).clone().to(tower.device)
    g = torch.Generator().manual_seed(seed)
    return (0.02 * torch.randn(shape, generator=g)).to(tower.device)


def handcrafted_features(
    tower: TextTower, classnames: list[str], template: str | None, text_weights: Tensor
) -> Tensor:
    """(C, D) L2-normalised float32 text features of the hand-written prompts: the tower's
    features of ``template.format(name)`` for each class (``_`` read as a space, as the
    references do), or, with ``template=None``, the task's zero-shot classifier
    ``text_weights`` (built from the task's prompt set)."""
    if template is None:
        return l2_normalize(text_weights.float().to(tower.device))
    texts = [template.format(c.replace("_", " ")) for c in classnames]
    with torch.no_grad():
        return l2_normalize(tower.encode_texts(texts).float())


def check_template(template: str | None) -> None:
    """``template`` is ``None`` or a string with one ``{}`` for the class name."""
    if template is None:
        return
    if not isinstance(template, str) or template.count("{}") != 1:
        raise InvalidValueError(
            f"template: expected None or a text with one '{{}}' for the class name, found "
            f"{template!r}"
        )


@register("coop")
class CoOp(Method):
    """CoOp on cached image features (needs ``task.text_tower``).

    Args:
        n_ctx: context vectors M (16 in the reference); ignored with ``ctx_init``, whose word
            count sets M.
        ctx_init: a phrase to start the context from (e.g. ``"a photo of a"``, the ``ctxv1``
            configs); ``""`` starts from N(0, 0.02²).
        csc: one context per class (class-specific context) instead of one shared.
        class_token_position: ``"end"`` (default), ``"middle"`` or ``"front"``.
        epochs: ``"auto"`` (:func:`coop_epochs` of the shots: 50/100/200) or a number.
        lr, momentum, weight_decay, batch_size, warmup_epochs, warmup_lr: the released configs'
            SGD (lr 0.002, momentum 0.9, weight decay 5e-4, batch 32) and Dassl's schedule: one
            warm-up epoch at 1e-5, then a cosine stepped per epoch.
        scale: logit scale; ``None`` uses the model's (``task.text_tower.logit_scale``).
        trim: run the text transformer on the prompts' length instead of the full context
            (the same features; see :mod:`fewclip.text_tower`).
        seed: seed of the context initialisation, the shuffling and the view draws.
        dtype, device: compute precision and device of the fitted text features.
        progress: show a progress bar over epochs.

    Attributes:
        ctx_ (M, W) or (C, M, W) tensor: the learned context vectors.
        text_features_ (C, D) tensor: the L2-normalised text features of the learned prompts.
        scale_ float: the logit scale used.
        epochs_ int: the epochs trained.

    Differences from the reference, deliberate: training runs in float32 (the reference keeps
    CLIP and the context in float16 with plain SGD); each epoch draws one stored augmented view
    per image instead of augmenting images afresh; the loader drops the last incomplete batch
    as Dassl's does (``drop_last`` when the support set holds at least one batch). As in the
    reference, the last epoch's context is kept (no validation).
    """

    training_free = False
    uses_validation = False
    needs_text_tower = True
    new_class_refusal = None  # the learned context re-assembled with new names (not csc)
    quick_params: ClassVar[Mapping[str, Any]] = {"epochs": 2, "n_ctx": 4}
    export_refusal: ClassVar[str | None] = None

    _state_tensors: ClassVar[tuple[str, ...]] = ("ctx_", "text_features_")
    _state_values: ClassVar[tuple[str, ...]] = ("scale_", "epochs_")

    def __init__(
        self,
        *,
        n_ctx: int = 16,
        ctx_init: str = "",
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
        self.n_ctx = n_ctx
        self.ctx_init = ctx_init
        self.csc = csc
        self.class_token_position = class_token_position
        self.epochs = epochs
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.warmup_epochs = warmup_epochs
        self.warmup_lr = warmup_lr
        self.scale = scale
        self.trim = trim
        self.seed = seed
        self.dtype = dtype
        self.device = device
        self.progress = progress

    # -- checks -----------------------------------------------------------------------------
    def _validate(self) -> None:
        if self.class_token_position not in _POSITIONS:
            raise InvalidValueError(
                f"class_token_position: expected one of {_POSITIONS}, found "
                f"{self.class_token_position!r}"
            )
        if self.epochs != "auto":
            check_ranges(self, epochs="int>=0")
        check_ranges(self, n_ctx="int>=1", batch_size="int>=1", lr="lr", warmup_lr="lr")
        if self.scale is not None and not float(self.scale) > 0:
            raise InvalidValueError(
                f"scale: expected a positive number or None, found {self.scale}"
            )

    # -- fitting ----------------------------------------------------------------------------
    def _fit(self, task: Task) -> None:
        self._validate()
        tower = task.text_tower
        assert tower is not None  # Method.fit checks needs_text_tower
        shots = int(torch.bincount(task.support.labels, minlength=task.n_classes).max())
        self.epochs_ = self._epochs_for(shots)
        self.scale_ = float(tower.logit_scale if self.scale is None else self.scale)
        prompts = self._prompt_context(tower, task.classnames)
        run = PromptRun(tower, prompts, self._initial_params(prompts, tower, task), self.trim)
        if self.epochs_ > 0:
            self._train(task, run)
        self._keep(run)

    def _epochs_for(self, shots: int) -> int:
        return coop_epochs(shots) if self.epochs == "auto" else int(self.epochs)

    def _prompt_context(self, tower: TextTower, classnames: list[str]) -> PromptContext:
        return PromptContext(
            tower,
            classnames,
            n_ctx=self.n_ctx,
            init=self.ctx_init,
            position=self.class_token_position,
        )

    def _initial_params(self, prompts: PromptContext, tower: TextTower, task: Task) -> list[Tensor]:
        """The trainable tensors, the context first (what ``PromptRun.params`` holds)."""
        return [self._initial_context(prompts, tower, task.n_classes)]

    def _initial_context(self, prompts: PromptContext, tower: TextTower, n_classes: int) -> Tensor:
        return initial_context(
            prompts, tower, seed=self.seed, n_classes=n_classes if self.csc else None
        )

    def _keep(self, run: PromptRun) -> None:
        """The fitted state: the context and the text features of the learned prompts."""
        self.ctx_ = run.ctx.detach().to(self._dtype)
        with torch.no_grad():
            self.text_features_ = self._to(run.text())

    def _train(self, task: Task, run: PromptRun) -> None:
        """Dassl's loop: per epoch, the learning rate of the schedule, then shuffled batches of
        one stored view per image; per batch, one :meth:`_step` (by default: the C prompts
        through the tower, :meth:`_loss`, and one SGD step on ``run.params`` with momentum and
        weight decay as ``torch.optim.SGD``)."""
        tower = run.tower
        self._begin_training(task, run)
        for p in run.params:
            p.requires_grad_(True)
        opt = torch.optim.SGD(
            run.params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
        )
        bank = task.support.view_bank()
        n_views, n = bank.shape[0], bank.shape[1]
        labels = task.support.labels.to(tower.device)
        g = torch.Generator().manual_seed(self.seed)
        try:
            for epoch in tqdm(range(self.epochs_), desc=self.name, disable=not self.progress):
                for group in opt.param_groups:
                    group["lr"] = self._lr_at(epoch)
                ep = dassl_epoch(n, n_views, self.batch_size, g)
                images = l2_normalize(bank[ep.view_of[ep.order], ep.order].float()).to(tower.device)
                targets = labels[ep.order.to(tower.device)]
                for batch in ep.batches:
                    self._step(opt, run, images[batch], targets[batch])
        finally:
            for p in run.params:
                p.requires_grad_(False)

    def _begin_training(self, task: Task, run: PromptRun) -> None:
        """Called once before the first step (a regulariser's fixed targets are built here)."""

    def _step(self, opt: torch.optim.Optimizer, run: PromptRun, x: Tensor, y: Tensor) -> None:
        """One optimiser step on the batch of L2-normalised image features ``x`` (B, D)."""
        loss = self._loss(run, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def _loss(self, run: PromptRun, x: Tensor, y: Tensor) -> Tensor:
        """CoOp's loss: ``mean CE(s · x · tᵀ, y)`` with t the prompts' normalised features."""
        logits = self.scale_ * x @ run.text().T
        return torch.nn.functional.cross_entropy(logits, y)

    def _lr_at(self, epoch: int) -> float:
        return dassl_lr(
            epoch,
            lr=self.lr,
            epochs=self.epochs_,
            warmup_epochs=self.warmup_epochs,
            warmup_lr=self.warmup_lr,
        )

    # -- prediction -------------------------------------------------------------------------
    def _for_classes(
        self, classnames: list[str], text_weights: Tensor, text_tower: TextTower | None
    ) -> None:
        """The learned context with the new names through the tower (CoOp's evaluation on new
        classes: the prompts are rebuilt for the test classes' names)."""
        from fewclip.methods.base import NewClassesError

        if self.csc:
            raise NewClassesError(
                "coop with csc=True cannot score classes it was not fitted on: its "
                "class-specific contexts exist for the training classes only"
            )
        if text_tower is None:
            raise InvalidValueError(
                "text_tower: coop builds the new classes' prompts through the text encoder; "
                "pass text_tower=backbone.text_tower() (the backbone it was fitted with)"
            )
        prompts = self._prompt_context(text_tower, classnames)  # the fit's layout (ProGrad's)
        ctx = self.ctx_.to(device=text_tower.device, dtype=torch.float32)
        with torch.no_grad():
            text = text_tower.encode(prompts.assemble(ctx), prompts.eot, trim=self.trim)
        self.text_features_ = self._to(l2_normalize(text.float()))

    def _logits(self, x: Tensor) -> Tensor:
        return self.scale_ * (x @ self.text_features_.to(x.dtype).T)
