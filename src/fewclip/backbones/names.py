"""Model names: the OpenAI aliases and how a name picks a backend.

OpenAI's CLIP models were trained with QuickGELU. open_clip 3.x builds plain ``ViT-B-16`` with
``nn.GELU`` even when ``pretrained="openai"`` (it only warns), which computes wrong features, so
fewclip maps every OpenAI name to the ``-quickgelu`` architecture with the ``openai`` tag.
"""

from __future__ import annotations

__all__ = ["HF_OPENAI_IDS", "OPENAI_ALIASES", "TINY_NAMES", "openai_alias"]

OPENAI_ALIASES: dict[str, tuple[str, str]] = {
    "RN50": ("RN50-quickgelu", "openai"),
    "RN101": ("RN101-quickgelu", "openai"),
    "RN50x4": ("RN50x4-quickgelu", "openai"),
    "RN50x16": ("RN50x16-quickgelu", "openai"),
    "RN50x64": ("RN50x64-quickgelu", "openai"),
    "ViT-B/32": ("ViT-B-32-quickgelu", "openai"),
    "ViT-B/16": ("ViT-B-16-quickgelu", "openai"),
    "ViT-L/14": ("ViT-L-14-quickgelu", "openai"),
    "ViT-L/14@336px": ("ViT-L-14-336-quickgelu", "openai"),
}
"""OpenAI CLIP name → (open_clip architecture, pretrained tag)."""

HF_OPENAI_IDS: dict[str, str] = {
    "ViT-B/32": "openai/clip-vit-base-patch32",
    "ViT-B/16": "openai/clip-vit-base-patch16",
    "ViT-L/14": "openai/clip-vit-large-patch14",
    "ViT-L/14@336px": "openai/clip-vit-large-patch14-336",
}
"""OpenAI CLIP name → transformers model id (there is no HF CLIP-ResNet)."""

TINY_NAMES = ("fewclip-tiny-vit", "fewclip-tiny-rn", "fewclip-tiny-hf")
"""Random-weight, seeded tiny models for tests and the demo (no download)."""


def openai_alias(name: str) -> tuple[str, str] | None:
    """``(architecture, tag)`` for an OpenAI CLIP name (``"ViT-B/16"``, also ``"ViT-B-16"``-style
    spellings of the slash names are *not* aliases: those are open_clip architectures), else
    ``None``."""
    return OPENAI_ALIASES.get(name)
