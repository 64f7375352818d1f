"""A few seconds of CLIP-style training for a tiny open_clip model, for demos only.

A tiny model with random weights maps every image to nearly the same direction, so methods
that rely on CLIP's geometry (zero-shot, Tip-Adapter's cache) sit at chance on it. The demo
therefore first teaches ``fewclip-tiny-vit`` a little about its generated world:
:func:`pretrain_tiny` trains image and text towers together with CLIP's contrastive
objective on *separately generated* images (never the demo's train/test images) whose
captions are deliberately noisy (``label_noise``), so that zero-shot is imperfect and few-shot
adaptation has something to add — as with real CLIP. It is a toy, not a CLIP model.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fewclip.backbones.base import Backbone
from fewclip.errors import InvalidTypeError
from fewclip.testing.images import SHAPE_CLASSES, draw_shape_image

__all__ = ["pretrain_tiny"]

_CAPTIONS = ("a photo of a {}.", "a {}.", "{}", "an image of a {}.")


def pretrain_tiny(
    backbone: Backbone,
    *,
    classes: tuple[str, ...] = SHAPE_CLASSES,
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 2e-3,
    label_noise: float = 0.4,
    seed: int = 1234,
) -> dict[str, float]:
    """Train ``backbone.model`` in place (open_clip models only); return the final loss.

    Each step draws ``batch_size`` fresh images (random classes, seeded generator), applies
    the backbone's training augmentation, and pairs each with a caption of its class — or, with
    probability ``label_noise``, of a random class. The loss is CLIP's symmetric
    cross-entropy over the batch's image-caption similarity matrix. Runs under
    ``torch.random.fork_rng`` and leaves the model in eval mode with frozen weights.
    """
    model = backbone.model
    tokenizer = getattr(backbone, "tokenizer", None)
    if tokenizer is None or not hasattr(model, "encode_text"):
        raise InvalidTypeError(
            f"backbone {backbone.name!r}: pretrain_tiny needs an open_clip model"
        )
    rng = np.random.default_rng(seed)
    augment = backbone.train_transform
    size = max(backbone.image_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        model.train()
        model.requires_grad_(True)
        opt = torch.optim.AdamW(
            [p for n, p in model.named_parameters() if n != "logit_scale"], lr=lr, weight_decay=0.1
        )
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
        loss_value = float("nan")
        for _ in range(steps):
            ys = rng.integers(0, len(classes), batch_size)
            images = torch.stack(
                [augment(draw_shape_image(classes[y], rng, size * 2), gen) for y in ys]
            ).to(backbone.device)
            noisy = np.where(
                rng.random(batch_size) < label_noise, rng.integers(0, len(classes), batch_size), ys
            )
            texts = [
                _CAPTIONS[rng.integers(len(_CAPTIONS))].format(classes[y].replace("_", " "))
                for y in noisy
            ]
            tokens = tokenizer(texts).to(backbone.device)
            img = F.normalize(model.encode_image(images), dim=-1)
            txt = F.normalize(model.encode_text(tokens), dim=-1)
            logits = 20.0 * img @ txt.T
            # Captions of the same class are positives too (many duplicates per batch).
            same = torch.as_tensor(noisy[:, None] == noisy[None, :], dtype=logits.dtype)
            target = same / same.sum(dim=1, keepdim=True)
            loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target.T))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_value = float(loss.detach())
        model.eval()
        model.requires_grad_(False)
    backbone._id = None  # weights changed: recompute the fingerprint
    from fewclip.backbones.base import state_dict_digest

    backbone._weights = state_dict_digest(model)
    return {"loss": loss_value}
