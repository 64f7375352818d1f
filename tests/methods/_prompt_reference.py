"""The prompt learners' computations written from their definitions with open_clip's own text
forward (full 77-token context, no trimming, no fewclip code), for test_kgcoop.py,
test_prograd.py and test_cocoop.py."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

import fewclip.backbones as fb
from fewclip.functional import l2_normalize
from fewclip.task import FeatureSet, Task

CLASSES = ["red circle", "blue_square", "green triangle"]


def make_task(backbone: fb.Backbone, n_per_class: int = 4, seed: int = 0, views: int = 0) -> Task:
    """Three clustered classes in the backbone's dimension, the task's text weights from
    ``"a photo of a {name}."``, with the backbone's text tower."""
    g = torch.Generator().manual_seed(seed)
    c, d = len(CLASSES), backbone.embed_dim
    centres = torch.randn(c, d, generator=g)
    labels = torch.arange(c).repeat_interleave(n_per_class)
    feats = 3 * centres[labels] + torch.randn(len(labels), d, generator=g)
    bank = feats + 0.3 * torch.randn(views, *feats.shape, generator=g) if views else None
    weights = l2_normalize(backbone.encode_texts([f"a photo of a {n}." for n in CLASSES]))
    return Task(CLASSES, weights, FeatureSet(feats, labels, bank), text_tower=backbone.text_tower())


def prompt_tokens(backbone: fb.Backbone, prefix: str) -> Tensor:
    """Tokens of ``"<prefix> <name>."`` for each class (``_`` read as a space)."""
    return backbone.tokenize([f"{prefix} {n.replace('_', ' ')}." for n in CLASSES])


def open_clip_text(model, tokens: Tensor, ctx: Tensor) -> Tensor:
    """open_clip's ``encode_text`` (unnormalised) with the token embeddings 1..M replaced by
    ``ctx``: (M, W) for every prompt, or (N, M, W) one per prompt."""
    emb = model.token_embedding(tokens)
    m = ctx.shape[-2]
    ctx = ctx.expand(len(tokens), -1, -1) if ctx.ndim == 2 else ctx
    x = torch.cat([emb[:, :1], ctx.to(emb.dtype), emb[:, 1 + m :]], dim=1)
    x = x + model.positional_embedding
    x = model.transformer(x, attn_mask=model.attn_mask)
    x = model.ln_final(x)
    return x[torch.arange(len(tokens)), tokens.argmax(-1)] @ model.text_projection


def coop_logits(backbone, tokens: Tensor, ctx: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(s · x̂ · t̂ᵀ, t̂)`` with t̂ the normalised features of the prompts with ``ctx``."""
    text = F.normalize(open_clip_text(backbone.model, tokens, ctx), dim=-1)
    return backbone.logit_scale * F.normalize(x, dim=-1) @ text.T, text


def phrase_vectors(backbone: fb.Backbone, phrase: str) -> Tensor:
    """The token embeddings of the words of ``phrase`` (positions 1..k)."""
    k = len(phrase.split(" "))
    with torch.no_grad():
        return backbone.model.token_embedding(backbone.tokenize([phrase]))[0, 1 : 1 + k].clone()


def sgd(params: Tensor, grad: Tensor, *, lr: float, wd: float = 5e-4, momentum_buf=None):
    """One step of ``torch.optim.SGD`` (momentum 0.9, weight decay ``wd``) written out; returns
    ``(new params, new momentum buffer)``."""
    d = grad + wd * params
    buf = d if momentum_buf is None else 0.9 * momentum_buf + d
    return params - lr * buf, buf


#: Every CoOp setting KgCoOp and ProGrad pass on, each away from all three methods' defaults.
COOP_SETTINGS = {
    "n_ctx": 5,
    "ctx_init": "",
    "csc": True,
    "class_token_position": "middle",
    "epochs": 3,
    "lr": 3e-3,
    "momentum": 0.5,
    "weight_decay": 1e-3,
    "batch_size": 4,
    "warmup_epochs": 2,
    "warmup_lr": 1e-3,
    "scale": 50.0,
    "seed": 3,
}


def assert_trains_as_coop(task: Task, make) -> None:
    """``make(**settings)`` (a CoOp variant with its own term switched off) trains exactly as
    CoOp with ``COOP_SETTINGS``; leaving out any one setting (the variant's default) changes
    the result, so a setting dropped on its way to CoOp would show."""
    from fewclip.methods.coop import CoOp

    x = task.support.features
    coop = CoOp(**COOP_SETTINGS).fit(task)
    variant = make(**COOP_SETTINGS).fit(task)
    assert torch.equal(variant.ctx_, coop.ctx_)
    assert torch.equal(variant.logits(x), coop.logits(x))
    for name in COOP_SETTINGS:
        left_out = make(**{k: v for k, v in COOP_SETTINGS.items() if k != name}).fit(task)
        assert not torch.equal(left_out.logits(x), coop.logits(x)), name
