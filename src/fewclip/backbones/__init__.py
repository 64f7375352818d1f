"""Backbones: load any CLIP-style model behind one interface.

>>> import fewclip.backbones as fb
>>> bb = fb.load("fewclip-tiny-vit")          # tiny random model, no download
>>> bb.embed_dim, bb.image_size
(64, (32, 32))

Names accepted by :func:`load`:

- OpenAI names ``RN50``, ``RN101``, ``RN50x4``, ``RN50x16``, ``RN50x64``, ``ViT-B/32``,
  ``ViT-B/16``, ``ViT-L/14``, ``ViT-L/14@336px`` → open_clip ``-quickgelu`` + ``openai`` weights;
- any open_clip architecture with ``pretrained=`` a tag, a checkpoint file or ``"random"``;
- ``local-dir:/folder`` (open_clip layout) and ``hf-hub:org/repo`` (open_clip on the Hub);
- ``hf:<id or folder>`` → transformers CLIP/SigLIP (extra ``hf``); a plain folder path is routed
  by its contents (``open_clip_config.json`` → open_clip, ``config.json`` → transformers);
- ``fewclip-tiny-vit``, ``fewclip-tiny-rn``, ``fewclip-tiny-hf`` → tiny random models.

Named weights come from the Hugging Face cache; a download is tried only when it can succeed
quickly (offline mode off, the Hub reachable), so a missing model fails within seconds with a
:class:`WeightsNotFoundError` that says how to use local weights. :func:`local_backbones` lists
what loads without a network right now.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from fewclip._device import resolve_device
from fewclip.backbones.base import (
    PRECISIONS,
    Backbone,
    BackboneError,
    UnknownBackboneError,
    WeightsNotFoundError,
)
from fewclip.backbones.names import HF_OPENAI_IDS, OPENAI_ALIASES, TINY_NAMES
from fewclip.backbones.transforms import Augment, AugmentTransform, Preprocess
from fewclip.errors import InvalidTypeError, InvalidValueError

__all__ = [
    "HF_OPENAI_IDS",
    "OPENAI_ALIASES",
    "PRECISIONS",
    "TINY_NAMES",
    "Augment",
    "AugmentTransform",
    "Backbone",
    "BackboneError",
    "Preprocess",
    "UnknownBackboneError",
    "WeightsNotFoundError",
    "load",
    "local_backbones",
]


def local_backbones(cache_dir: str | os.PathLike | None = None) -> list[str]:
    """Backbones that load without a network right now, fastest check first.

    Reads the Hugging Face cache (``cache_dir``, default ``$HF_HUB_CACHE``) only: no network,
    no model construction (milliseconds). In order:

    - the tiny names (:data:`TINY_NAMES`): random, untrained toy models, always available;
    - OpenAI names (``"RN50"``, ``"ViT-B/16"``, ...) whose weights are cached;
    - other open_clip (architecture, tag) pairs with cached weights, spelled
      ``"ARCH --pretrained TAG"``, the command-line form (in Python:
      ``load(ARCH, pretrained=TAG)``); weights shared by several names are listed once;
    - ``"hf-hub:org/repo"`` open_clip models and, with the ``hf`` extra, ``"hf:org/repo"``
      transformers CLIP/SigLIP models found complete in the cache.

    Models that need a Hugging Face tokenizer (SigLIP, ...) are listed only when it is cached too.
    """
    from fewclip.backbones.hf import local_hf_names
    from fewclip.backbones.openclip import local_open_clip_names

    return [*TINY_NAMES, *local_open_clip_names(cache_dir), *local_hf_names(cache_dir)]


def load(
    name: str,
    *,
    pretrained: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    precision: str = "amp",
    cache_dir: str | os.PathLike | None = None,
    augment: Augment | None = None,
) -> Backbone:
    """Load a backbone by name (see the module docstring for the names).

    Args:
        name: model name, ``local-dir:``/``hf-hub:``/``hf:`` id, or a local folder.
        pretrained: open_clip weights: a tag (``"openai"``, ``"laion2b_s34b_b79k"``), a local
            checkpoint file, or ``"random"``. OpenAI names default to ``"openai"``; other
            open_clip architectures require it. Ignored by schema names and folders.
        device: where the model runs (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...).
        precision: one of :data:`PRECISIONS` (default ``"amp"``: float16 autocast on CUDA,
            float32 on CPU).
        cache_dir: Hugging Face cache to read (and, when online, download) weights in; default
            ``$HF_HOME/hub``.
        augment: training-augmentation parameters for augmented views (default: the
            Tip-Adapter reference, RandomResizedCrop(scale=(0.5, 1), bicubic) + flip).

    Raises:
        WeightsNotFoundError: the weights are not local and could not be downloaded; the
            message says where fewclip looked and how to provide local weights.
        BackboneError: unknown name or tag, unsupported model, bad folder.
    """
    if precision not in PRECISIONS:
        raise InvalidValueError(f"precision: expected one of {PRECISIONS}, found {precision!r}")
    if not isinstance(name, str) or not name:
        raise InvalidTypeError(f"name: expected a non-empty model name, found {name!r}")
    resolve_device(device)
    if name in TINY_NAMES:
        from fewclip.backbones.tiny import load_tiny

        return load_tiny(
            name, pretrained=pretrained, device=device, precision=precision, augment=augment
        )
    if name.startswith("hf:"):
        from fewclip.backbones.hf import load_hf

        return load_hf(
            name[3:],
            name=name,
            device=device,
            precision=precision,
            cache_dir=cache_dir,
            augment=augment,
        )
    from fewclip.backbones.openclip import load_open_clip

    path = Path(name)
    if not name.startswith(("local-dir:", "hf-hub:")) and path.is_dir():
        if (path / "open_clip_config.json").is_file():
            name = f"local-dir:{name}"
        elif (path / "config.json").is_file():
            from fewclip.backbones.hf import load_hf

            return load_hf(
                path, name=str(path), device=device, precision=precision, augment=augment
            )
        else:
            raise BackboneError(
                f"Model {name!r}: the folder holds neither open_clip_config.json (open_clip) nor "
                "config.json (transformers)"
            )
    return load_open_clip(
        name,
        pretrained=pretrained,
        device=device,
        precision=precision,
        cache_dir=cache_dir,
        augment=augment,
    )
