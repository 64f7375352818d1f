"""Tiny random-weight backbones for tests and the demo. Nothing is downloaded.

- ``"fewclip-tiny-vit"``: open_clip ViT, 32 px images, patch 8, 2 layers of width 64.
- ``"fewclip-tiny-rn"``: open_clip ModifiedResNet, 64 px images, one block per stage.
- ``"fewclip-tiny-hf"``: a transformers ``CLIPModel`` (needs the ``hf`` extra), 32 px images.

All three use the real CLIP BPE tokenizer bundled with open_clip (vocabulary 49,408, which is
why the token embedding dominates their ~1-3 M parameters), OpenAI normalisation, and a logit
scale of 100 like trained CLIP. Weights are drawn from a fixed seed inside
``torch.random.fork_rng``, so every load gives identical weights (and the same
:attr:`~fewclip.backbones.base.Backbone.id`) without touching the caller's RNG state.
"""

from __future__ import annotations

import copy
import gzip
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from fewclip.backbones.base import Backbone, BackboneError
from fewclip.backbones.transforms import OPENAI_MEAN, OPENAI_STD, Augment

__all__ = ["TINY_CONFIGS", "load_tiny", "write_tiny_hf"]

_TEXT_CFG = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}

TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "fewclip-tiny-vit": {
        "embed_dim": 64,
        "init_logit_scale": math.log(100.0),
        "vision_cfg": {
            "image_size": 32,
            "layers": 2,
            "width": 64,
            "head_width": 32,
            "patch_size": 8,
            "mlp_ratio": 2.0,
        },
        "text_cfg": dict(_TEXT_CFG),
    },
    "fewclip-tiny-rn": {
        "embed_dim": 64,
        "init_logit_scale": math.log(100.0),
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "head_width": 32},
        "text_cfg": dict(_TEXT_CFG),
    },
}
"""open_clip ``model_cfg`` dicts of the tiny open_clip models."""

_TINY_PREPROCESS = {
    "mean": list(OPENAI_MEAN),
    "std": list(OPENAI_STD),
    "interpolation": "bicubic",
    "resize_mode": "shortest",
    "fill_color": 0,
}


def load_tiny(
    name: str,
    *,
    pretrained: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    precision: str = "amp",
    augment: Augment | None = None,
    seed: int = 0,
) -> Backbone:
    """Build a tiny model. ``pretrained`` may be a checkpoint file (``.safetensors``/``.bin``)
    holding weights for the same architecture; it is loaded with open_clip's own loader."""
    if name == "fewclip-tiny-hf":
        from fewclip.backbones.hf import load_hf

        with tempfile.TemporaryDirectory(prefix="fewclip-tiny-hf-") as tmp:
            write_tiny_hf(tmp, seed=seed)
            return load_hf(tmp, name=name, device=device, precision=precision, augment=augment)
    if name not in TINY_CONFIGS:
        raise BackboneError(f"name: expected one of {sorted(TINY_CONFIGS)}, found {name!r}")
    import open_clip
    from open_clip.model import CLIP, set_model_preprocess_cfg

    from fewclip.backbones.openclip import _finish

    cfg = copy.deepcopy(TINY_CONFIGS[name])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIP(**copy.deepcopy(cfg))
    size = cfg["vision_cfg"]["image_size"]
    set_model_preprocess_cfg(model, {"size": (size, size), **_TINY_PREPROCESS})
    if pretrained is not None:
        path = os.fspath(pretrained)
        if not os.path.isfile(path):
            raise BackboneError(f"pretrained: expected a checkpoint file, found no file at {path}")
        open_clip.load_checkpoint(model, path, strict=True)
    tokenizer = open_clip.SimpleTokenizer(context_length=cfg["text_cfg"]["context_length"])
    return _finish(
        model,
        name=name,
        tokenizer=tokenizer,
        model_cfg=cfg,
        arch_name=name,
        device=device,
        precision=precision,
        augment=augment,
    )


def _clip_bpe_files(folder: Path) -> None:
    """Write HF ``vocab.json`` + ``merges.txt`` equivalent to open_clip's bundled CLIP BPE."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    with gzip.open(default_bpe(), "rt", encoding="utf-8") as f:
        merges = f.read().split("\n")[1 : 49152 - 256 - 2 + 1]
    pairs = [tuple(m.split()) for m in merges]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab.extend("".join(p) for p in pairs)
    vocab.extend(["<|startoftext|>", "<|endoftext|>"])
    (folder / "vocab.json").write_text(
        json.dumps({tok: i for i, tok in enumerate(vocab)}), encoding="utf-8"
    )
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(p) for p in pairs) + "\n", encoding="utf-8"
    )


def write_tiny_hf(folder: str | os.PathLike, *, seed: int = 0) -> Path:
    """Write a tiny random transformers CLIP model, tokenizer and preprocessor config to
    ``folder`` (the layout of a downloaded Hub snapshot) and return the folder."""
    try:
        from transformers import CLIPConfig, CLIPModel, CLIPTokenizer
    except ImportError as e:
        raise BackboneError("fewclip-tiny-hf needs transformers: pip install 'fewclip[hf]'") from e
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = CLIPConfig(
        text_config={
            "vocab_size": 49408,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "bos_token_id": 49406,
            "eos_token_id": 49407,
            "pad_token_id": 49407,
        },
        vision_config={
            "image_size": 32,
            "patch_size": 8,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
        },
        projection_dim=32,
        logit_scale_init_value=math.log(100.0),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    model.save_pretrained(folder)
    _clip_bpe_files(folder)
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    tok.model_max_length = 77
    tok.save_pretrained(folder)
    preprocessor = {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": 32},
        "do_center_crop": True,
        "crop_size": {"height": 32, "width": 32},
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(OPENAI_MEAN),
        "image_std": list(OPENAI_STD),
        "do_convert_rgb": True,
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    return folder
