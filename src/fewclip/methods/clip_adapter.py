"""CLIP-Adapter (Gao et al., 2021): a bottleneck MLP with a residual blend on frozen features.

Adapter ``A(f) = ReLU(W₂·ReLU(W₁·f))`` with bias-free ``W₁: D → D/r`` and ``W₂: D/r → D``.
Visual branch (the paper's default and the released code): ``f' = ρ·A_v(f) + (1 − ρ)·f`` on the
**raw** image embedding, then L2-normalise; text branch ``W' = ρ_t·A_t(W) + (1 − ρ_t)·W``;
logits ``scale·f'·W'ᵀ`` after normalising both.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from fewclip.errors import InvalidValueError
from fewclip.functional import l2_normalize
from fewclip.methods._training import (
    DasslSchedule,
    FusedSGD,
    SeedEpochs,
    check_ranges,
    dassl_epoch,
    seed_generators,
)
from fewclip.methods.base import Method, register
from fewclip.task import Task
from fewclip.text_tower import TextTower

__all__ = ["Adapter", "CLIPAdapter", "RatioNet"]

_BRANCHES = ("visual", "text", "both")


class Adapter(nn.Module):
    """Bias-free ``Linear(D, D/r) → ReLU → Linear(D/r, D) → ReLU`` (the released adapter)."""

    def __init__(self, dim: int, reduction: int):
        super().__init__()
        hidden = max(1, dim // reduction)
        self.fc = nn.Sequential(
            nn.Linear(dim, hidden, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, dim, bias=False),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x)


class RatioNet(nn.Module):
    """Hypernetwork for the learnable-ratio variant: class text embeddings → (ρ_v, ρ_t).

    The paper only says a small network predicts the residual ratios from the dataset's text
    embeddings; we read that as an MLP over the mean of the L2-normalised class text
    embeddings, ``σ(W₂·ReLU(W₁·mean(W)) + b)``, trained jointly with the adapters. The output
    layer starts at zero weight with bias ``logit(ρ₀)``, so training begins at the configured
    ratios.
    """

    def __init__(self, dim: int, hidden: int, init_ratios: tuple[float, float]):
        super().__init__()
        self.hidden = nn.Linear(dim, hidden)
        self.out = nn.Linear(hidden, 2)
        nn.init.zeros_(self.out.weight)
        with torch.no_grad():
            self.out.bias.copy_(torch.logit(torch.tensor(init_ratios).clamp(1e-4, 1 - 1e-4)))

    def forward(self, text_weights: Tensor) -> Tensor:
        summary = text_weights.mean(dim=0)
        return torch.sigmoid(self.out(torch.relu(self.hidden(summary))))


@register("clip-adapter")
class CLIPAdapter(DasslSchedule, Method):
    """CLIP-Adapter on cached features.

    Args:
        ratio: visual residual ratio ρ (0.2 in the released code; ≈0.6 suits fine-grained data).
        text_ratio: text residual ratio ρ_t (used by the ``text`` and ``both`` branches).
        branch: ``"visual"`` (default), ``"text"`` or ``"both"``.
        reduction: bottleneck reduction r (hidden width D/r; 4 in the paper).
        learn_ratio: predict (ρ, ρ_t) with a small hypernetwork over the class text embeddings
            (``RatioNet``) instead of fixing them.
        epochs, lr, momentum, weight_decay, batch_size: SGD settings of CoOp's ``rn50.yaml``
            (lr 2e-3, momentum 0.9, weight decay 5e-4, batch 32, 200 epochs), cosine schedule
            stepped per epoch after ``warmup_epochs`` at constant ``warmup_lr`` (Dassl).
        scale: logit scale (CLIP's exp(logit_scale) ≈ 100).
        seed: seed of initialisation, shuffling and view draws.
        dtype, device: compute precision and device.
        progress: show a progress bar over epochs.

    Attributes:
        text_weights_ (C, D) tensor: the task's L2-normalised text weights W.
        modules_ ``nn.ModuleDict``: the trained ``"visual"`` and/or ``"text"`` adapters (by
            ``branch``), plus the ``"ratio"`` ``RatioNet`` with ``learn_ratio``.
        ratio_ float: the visual residual ratio ρ in effect (the RatioNet's with ``learn_ratio``).
        text_ratio_ float: the text residual ratio ρ_t in effect.

    Each epoch draws one stored augmented view per support image instead of re-running the
    image encoder. The last epoch's weights are kept (as Dassl's default final model).
    """

    training_free = False
    uses_validation = False
    batches_seeds = True
    # the adapters act on any image feature and any class's text weights
    new_class_refusal = None
    quick_params: ClassVar[Mapping[str, Any]] = {"epochs": 3}

    _state_values = ("ratio_", "text_ratio_")

    def __init__(
        self,
        *,
        ratio: float = 0.2,
        text_ratio: float = 0.2,
        branch: str = "visual",
        reduction: int = 4,
        learn_ratio: bool = False,
        epochs: int = 200,
        lr: float = 2e-3,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        batch_size: int = 32,
        warmup_epochs: int = 1,
        warmup_lr: float = 1e-5,
        scale: float = 100.0,
        seed: int = 1,
        dtype: str = "float32",
        device: str = "cpu",
        progress: bool = False,
    ):
        self.ratio = ratio
        self.text_ratio = text_ratio
        self.branch = branch
        self.reduction = reduction
        self.learn_ratio = learn_ratio
        self.epochs = epochs
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.warmup_epochs = warmup_epochs
        self.warmup_lr = warmup_lr
        self.scale = scale
        self.seed = seed
        self.dtype = dtype
        self.device = device
        self.progress = progress

    # -- modules ----------------------------------------------------------------------------
    def _validate(self) -> None:
        if self.branch not in _BRANCHES:
            raise InvalidValueError(f"branch: expected one of {_BRANCHES}, found {self.branch!r}")
        for name in ("ratio", "text_ratio"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise InvalidValueError(f"{name}: expected a value in [0, 1], found {v}")
        if self.reduction < 1:
            raise InvalidValueError(
                f"reduction: expected a positive integer, found {self.reduction}"
            )
        check_ranges(self, epochs="int>=0", batch_size="int>=1", lr="lr", warmup_lr="lr")

    def _build(self, dim: int) -> None:
        torch.manual_seed(self.seed)
        modules: dict[str, nn.Module] = {}
        if self.branch in ("visual", "both"):
            modules["visual"] = Adapter(dim, self.reduction)
        if self.branch in ("text", "both"):
            modules["text"] = Adapter(dim, self.reduction)
        if self.learn_ratio:
            modules["ratio"] = RatioNet(dim, max(8, dim // 16), (self.ratio, self.text_ratio))
        self.modules_ = nn.ModuleDict(modules).to(device=self._device, dtype=self._dtype)
        self.modules_.eval()

    def _ratios(self) -> tuple[Tensor | float, Tensor | float]:
        if "ratio" in self.modules_:
            r = self.modules_["ratio"](self.text_weights_)
            return r[0], r[1]
        return self.ratio, self.text_ratio

    def _adapted_text(self, text_ratio: Tensor | float) -> Tensor:
        w = self.text_weights_
        if "text" in self.modules_:
            w = text_ratio * self.modules_["text"](w) + (1 - text_ratio) * w
        return l2_normalize(w)

    def _forward(self, raw: Tensor) -> Tensor:
        ratio, text_ratio = self._ratios()
        f = raw
        if "visual" in self.modules_:
            f = ratio * self.modules_["visual"](raw) + (1 - ratio) * raw
        return self.scale * (l2_normalize(f) @ self._adapted_text(text_ratio).T)

    # -- fitting ----------------------------------------------------------------------------
    def _fit(self, task: Task) -> None:
        self._validate()
        self.text_weights_ = l2_normalize(self._to(task.text_weights))
        self._build(task.dim)
        if self.epochs > 0 and any(True for _ in self.modules_.parameters()):
            self._train(task)
        with torch.no_grad():
            r, rt = self._ratios()
        self.ratio_, self.text_ratio_ = float(r), float(rt)

    def _train(self, task: Task) -> None:
        if set(self.modules_.keys()) == {"visual"}:
            self._train_visual(task)
        else:
            self._train_autograd(task)

    def _train_visual(self, task: Task) -> None:
        """The default (visual branch, fixed ratio): :func:`_train_visual_seeds` of this one
        seed."""
        _train_visual_seeds([self], [task])

    # -- several seeds as one batched model (fewclip.methods.fit_seeds) ---------------------
    @classmethod
    def _seeds_batchable(cls, models: Sequence[Method], tasks: Sequence[Task]) -> bool:
        """The default visual branch with a fixed ratio (the hand-written trainer) batches;
        the other branches train with autograd, one seed at a time."""
        first = models[0]
        assert isinstance(first, CLIPAdapter)
        return first.branch == "visual" and not first.learn_ratio

    @classmethod
    def _fit_seeds(cls, models: Sequence[Method], tasks: Sequence[Task]) -> None:
        adapters = [m for m in models if isinstance(m, CLIPAdapter)]
        assert len(adapters) == len(models)
        for m, task in zip(adapters, tasks, strict=True):
            m._validate()
            m.text_weights_ = l2_normalize(m._to(task.text_weights))
            m._build(task.dim)
        if adapters[0].epochs > 0:
            _train_visual_seeds(adapters, tasks)
        for m in adapters:
            m.ratio_, m.text_ratio_ = float(m.ratio), float(m.text_ratio)

    def _train_autograd(self, task: Task) -> None:
        bank = task.support.view_bank()
        n_views, n = bank.shape[0], bank.shape[1]
        targets = task.support.labels.to(self._device)
        optim = torch.optim.SGD(
            self.modules_.parameters(),
            lr=self._lr_at(0),
            momentum=self.momentum,
            weight_decay=self.weight_decay,
        )
        g = torch.Generator().manual_seed(self.seed)
        self.modules_.train()
        for epoch in tqdm(range(self.epochs), desc="clip-adapter", disable=not self.progress):
            for group in optim.param_groups:
                group["lr"] = self._lr_at(epoch)
            ep = dassl_epoch(n, n_views, self.batch_size, g)
            for batch in ep.batches:
                idx = ep.order[batch]
                logits = self._forward(self._to(bank[ep.view_of[idx], idx]))
                loss = nn.functional.cross_entropy(logits.float(), targets[idx])
                optim.zero_grad(set_to_none=True)
                loss.backward()
                optim.step()
        self.modules_.eval()

    def _for_classes(
        self, classnames: list[str], text_weights: Tensor, text_tower: TextTower | None
    ) -> None:
        """The trained adapters over the new classes' text weights (with ``learn_ratio`` the
        ratio network reads them too, as it reads a task's)."""
        self.text_weights_ = l2_normalize(self._to(text_weights))
        with torch.no_grad():
            r, rt = self._ratios()
        self.ratio_, self.text_ratio_ = float(r), float(rt)

    # -- inference --------------------------------------------------------------------------
    def _query_logits(self, x: Tensor) -> Tensor:
        """Class scores for raw query features: the adapter acts on the un-normalised embedding."""
        with torch.no_grad():
            return self._forward(x)

    # -- persistence ------------------------------------------------------------------------
    def _extra_state(self) -> dict[str, Tensor]:
        state = {f"modules.{k}": v for k, v in self.modules_.state_dict().items()}
        state["text_weights_"] = self.text_weights_
        return state

    def _load_extra_state(self, tensors: dict[str, Tensor]) -> None:
        self.text_weights_ = tensors["text_weights_"]
        self._build(self.n_features_in_)
        modules = {k[len("modules.") :]: v for k, v in tensors.items() if k.startswith("modules.")}
        self.modules_.load_state_dict(modules)


def _train_visual_seeds(models: Sequence[CLIPAdapter], tasks: Sequence[Task]) -> None:
    """Train the visual adapters of S seeds (the same hyper-parameters, support sets of one
    size) as one batched model, with a hand-written backward pass.

    The same SGD trajectory per seed as :meth:`CLIPAdapter._train_autograd` (same draws,
    batches, momentum and weight decay), about 2.5× faster: one step is a few small matmuls,
    and autograd's bookkeeping cost more than the arithmetic. With ``h = ReLU(x·W₁ᵀ)``,
    ``a = ReLU(h·W₂ᵀ)``, ``f = ρa + (1 − ρ)x``, ``u = f/‖f‖``, ``z = s·u·Tᵀ`` and
    ``L = mean CE(z, y)``::

        ∂L/∂z = (softmax(z) − onehot(y))/B      ∂L/∂u = s·(∂L/∂z)·T
        ∂L/∂f = (∂L/∂u − u·⟨u, ∂L/∂u⟩)/‖f‖      ∂L/∂a = ρ·∂L/∂f ⊙ [a > 0]
        ∂L/∂W₂ = (∂L/∂a)ᵀ·h                     ∂L/∂h = (∂L/∂a)·W₂ ⊙ [h > 0]
        ∂L/∂W₁ = (∂L/∂h)ᵀ·x

    Every tensor carries a leading seed dimension S (batched matmuls); seed ``s`` draws its
    epochs from its own generator seeded with its ``seed``, starts from its own initial
    weights and reads its own task, so with S = 1 this is the solo fit, and each seed of a
    batch equals its solo fit up to the summation order of the batched products (bit for bit
    at the grid's sizes on the CPUs we measured; tiny matrices may differ in the last bits).
    float16 trains in float32 (CPU half matmuls are slow and lose the small updates) and
    stores the result in float16.
    """
    first_model = models[0]
    adapters = [m.modules_["visual"] for m in models]
    firsts, seconds = [], []
    for adapter in adapters:
        assert isinstance(adapter, Adapter)
        first, second = adapter.fc[0], adapter.fc[2]
        assert isinstance(first, nn.Linear)
        assert isinstance(second, nn.Linear)
        firsts.append(first)
        seconds.append(second)
    work = torch.float32 if first_model._dtype == torch.float16 else first_model._dtype
    dev = first_model._device
    n_seeds = len(models)
    hidden, dim = firsts[0].weight.shape
    # every seed's W₁ and W₂ (and their gradients) live in one flat buffer, so that torch's
    # fused SGD updates them all in one elementwise pass (the same arithmetic per element)
    size = n_seeds * hidden * dim

    def pair() -> tuple[Tensor, Tensor, Tensor]:
        flat = torch.zeros(2 * size, dtype=work, device=dev)
        w1 = flat[:size].view(n_seeds, hidden, dim)
        return flat, w1, flat[size:].view(n_seeds, dim, hidden)

    weights, w1, w2 = pair()
    for s in range(n_seeds):
        w1[s].copy_(firsts[s].weight.detach())
        w2[s].copy_(seconds[s].weight.detach())
    grads, grad1, grad2 = pair()
    optim = FusedSGD(weights, momentum=first_model.momentum, weight_decay=first_model.weight_decay)
    text = torch.stack([m.text_weights_.to(work) for m in models])  # (S, C, D)
    banks = [task.support.view_bank() for task in tasks]
    n_views, n = banks[0].shape[0], banks[0].shape[1]
    n_classes = text.shape[1]
    # onehot(y) of every support image: subtracting it is the same arithmetic as
    # decrementing the label entries (x − 0 = x elsewhere)
    eye = torch.eye(n_classes, dtype=work, device=dev)
    onehot = torch.stack([eye[task.support.labels.to(dev)] for task in tasks])  # (S, N, C)
    rho, scale = float(first_model.ratio), float(first_model.scale)
    batch_size = first_model.batch_size
    # every per-step tensor is preallocated (a contiguous prefix for a shorter batch): fresh
    # allocations and their page faults cost as much as these small products
    bmax = min(batch_size, n)

    def buffer(width: int) -> Callable[[int], Tensor]:
        flat = torch.empty(n_seeds * bmax * width, dtype=work, device=dev)
        return lambda b: flat[: n_seeds * b * width].view(n_seeds, b, width)

    h, dh, h_on = (buffer(hidden) for _ in range(3))
    a, f, u, du, da, tmp, a_on = (buffer(dim) for _ in range(7))
    z = buffer(n_classes)
    norm, dot = buffer(1), buffer(1)
    # a_on, h_on: the ReLU masks [a > 0] and [h > 0] as 1.0/0.0 in the working dtype: the
    # products by them are those by the boolean masks, without converting a mask every step
    generators = seed_generators([m.seed for m in models])
    for epoch in tqdm(
        range(first_model.epochs), desc="clip-adapter", disable=not first_model.progress
    ):
        lr = first_model._lr_at(epoch)
        ep = SeedEpochs([dassl_epoch(n, n_views, batch_size, g) for g in generators])
        rows = ep.gather(banks).to(device=dev, dtype=work)  # (S, N, D)
        orders = ep.orders.to(dev)
        hot = torch.stack([onehot[s, orders[s]] for s in range(n_seeds)])
        for batch in ep.batches:
            x = rows[:, batch]
            b = x.shape[1]
            hb, ab, fb, ub, zb = h(b), a(b), f(b), u(b), z(b)
            torch.bmm(x, w1.mT, out=hb).relu_()
            torch.bmm(hb, w2.mT, out=ab).relu_()
            if rho:
                torch.add(ab, x, alpha=(1 - rho) / rho, out=fb).mul_(rho)
            else:
                fb.copy_(x)
            nb = torch.norm(fb, dim=2, keepdim=True, out=norm(b))
            torch.div(fb, nb, out=ub)
            dz = torch.softmax(torch.bmm(ub, text.mT, out=zb).mul_(scale), dim=2)
            dz.sub_(hot[:, batch])
            dub, dab, tb = du(b), da(b), tmp(b)
            torch.bmm(dz, text, out=dub).mul_(scale / b)
            dotb = torch.sum(torch.mul(ub, dub, out=tb), dim=2, keepdim=True, out=dot(b))
            torch.sub(dub, torch.mul(ub, dotb, out=tb), out=dab).div_(nb).mul_(rho)
            dab.mul_(torch.gt(ab, 0, out=a_on(b)))
            torch.bmm(dab.mT, hb, out=grad2)
            dhb = torch.bmm(dab, w2, out=dh(b)).mul_(torch.gt(hb, 0, out=h_on(b)))
            torch.bmm(dhb.mT, x, out=grad1)
            optim.step(grads, lr)
    with torch.no_grad():
        for s in range(n_seeds):
            firsts[s].weight.copy_(w1[s])
            seconds[s].weight.copy_(w2[s])
