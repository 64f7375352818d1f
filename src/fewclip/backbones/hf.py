"""transformers backbones (optional extra ``hf``): CLIP and SigLIP by Hub id or local folder.

Works with transformers 4.x and 5.x:

- 5.x returns a ``BaseModelOutputWithPooling`` from ``get_image_features`` /
  ``get_text_features``; fewclip reads its ``pooler_output`` (the projected embedding);
- SigLIP was trained on texts padded to the maximum length, so its prompts are padded with
  ``padding="max_length"`` (CLIP pads to the longest prompt, with an attention mask);
- weights are loaded in float32 and cast afterwards, which avoids the ``torch_dtype`` → ``dtype``
  rename.

Preprocessing is read from ``preprocessor_config.json`` and reproduced with fewclip's transforms
(CLIP: resize the short side + centre crop; SigLIP: squash resize).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fewclip.backbones.base import (
    Backbone,
    BackboneError,
    WeightsNotFoundError,
    state_dict_digest,
)
from fewclip.backbones.transforms import OPENAI_MEAN, OPENAI_STD, Augment, Preprocess

__all__ = ["HFBackbone", "load_hf"]

_SUPPORTED = ("clip", "siglip")
_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def _pooled(out: Any) -> Tensor:
    """The embedding tensor from a 4.x tensor or a 5.x model output."""
    if isinstance(out, Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if isinstance(pooled, Tensor):
        return pooled
    raise BackboneError(f"transformers returned {type(out).__name__} without a pooler_output")


class HFBackbone(Backbone):
    """A backbone built on a transformers ``CLIPModel`` or ``SiglipModel``."""

    family = "hf"

    def __init__(
        self,
        *,
        name: str,
        model: Any,
        tokenizer: Any,
        preprocess: Preprocess,
        weights: str,
        device: str | torch.device = "cpu",
        precision: str = "amp",
        augment: Augment | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        config: Any = model.config
        self.model_type = str(config.model_type)
        text_cfg = config.text_config
        self.context_length = int(
            getattr(text_cfg, "max_position_embeddings", 0) or tokenizer.model_max_length
        )
        super().__init__(
            name=name,
            model=model,
            preprocess=preprocess,
            arch={"hf_config": _config_record(config)},
            arch_name=f"hf-{self.model_type}",
            weights=weights,
            device=device,
            precision=precision,
            augment=augment,
        )
        with self._compute_context():
            self._embed_dim = int(self._encode_texts(["a"]).shape[-1])

    @property
    def embed_dim(self) -> int:
        return self._embed_dim

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp().float().item())

    @property
    def logit_bias(self) -> float | None:
        bias = getattr(self.model, "logit_bias", None)
        return None if bias is None else float(bias.detach().float().item())

    def _encode_images(self, x: Tensor) -> Tensor:
        return _pooled(self.model.get_image_features(pixel_values=x))

    def _encode_texts(self, texts: list[str]) -> Tensor:
        padding = "max_length" if self.model_type == "siglip" else True
        enc = self.tokenizer(
            texts,
            padding=padding,
            truncation=True,
            max_length=self.context_length,
            return_tensors="pt",
        )
        kwargs = {"input_ids": enc["input_ids"].to(self.device)}
        if self.model_type != "siglip" and "attention_mask" in enc:
            kwargs["attention_mask"] = enc["attention_mask"].to(self.device)
        return _pooled(self.model.get_text_features(**kwargs))


def _config_record(config: Any) -> dict[str, Any]:
    d = config.to_dict()
    drop = {"transformers_version", "_name_or_path", "torch_dtype", "dtype", "architectures"}

    def clean(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: clean(v) for k, v in sorted(x.items()) if k not in drop}
        return x

    out: dict[str, Any] = clean(d)
    return out


def _size(value: Any, default: int) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, dict):
        if "height" in value and "width" in value:
            return (int(value["height"]), int(value["width"]))
        if "shortest_edge" in value:
            s = int(value["shortest_edge"])
            return (s, s)
    return (default, default)


def preprocess_from_hf(pp: dict[str, Any], model_type: str, image_size: int) -> Preprocess:
    """Map a transformers ``preprocessor_config.json`` to a :class:`Preprocess`."""
    if pp.get("do_center_crop", False):
        size = _size(pp.get("crop_size"), image_size)
        mode = "shortest"
    else:
        size = _size(pp.get("size"), image_size)
        mode = (
            "squash" if model_type == "siglip" or "height" in (pp.get("size") or {}) else "shortest"
        )
    default_mean = (0.5, 0.5, 0.5) if model_type == "siglip" else OPENAI_MEAN
    default_std = (0.5, 0.5, 0.5) if model_type == "siglip" else OPENAI_STD
    return Preprocess(
        size=size,
        mean=tuple(pp.get("image_mean", default_mean)),
        std=tuple(pp.get("image_std", default_std)),
        interpolation=_RESAMPLE.get(int(pp.get("resample", 3)), "bicubic"),
        resize_mode=mode,
    )


def _hf_error(
    source: str, name: str, cache_dir: str | os.PathLike | None, e: Exception
) -> Exception:
    from huggingface_hub import constants

    cache = os.fspath(cache_dir) if cache_dir is not None else str(constants.HF_HUB_CACHE)
    offline = (
        " (HF_HUB_OFFLINE is set, so nothing was downloaded)" if constants.HF_HUB_OFFLINE else ""
    )
    return WeightsNotFoundError(
        f"Model {name!r}: transformers could not load {source!r}{offline}: "
        f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}\n"
        f"fewclip looked in: the folder {source!r} if it exists, then the Hugging Face cache "
        f"{cache}.\nTo use local weights: save the model with model.save_pretrained(folder) and "
        "tokenizer.save_pretrained(folder) (plus preprocessor_config.json) and load "
        "fewclip.backbones.load('hf:/path/to/folder'), or set HF_HOME / cache_dir to a cache "
        "that holds the model."
    )


def load_hf(
    source: str | os.PathLike,
    *,
    name: str | None = None,
    device: str | torch.device = "cpu",
    precision: str = "amp",
    cache_dir: str | os.PathLike | None = None,
    augment: Augment | None = None,
) -> HFBackbone:
    """Load a transformers CLIP/SigLIP model from a Hub id or a local folder.

    Raises:
        BackboneError: transformers missing, or the model is not CLIP/SigLIP.
        WeightsNotFoundError: not in the folder/cache and not downloadable.
    """
    try:
        import transformers
        from huggingface_hub import constants
        from transformers import AutoConfig, AutoModel, AutoTokenizer
    except ImportError as e:
        raise BackboneError(
            "transformers backbones need the 'hf' extra: pip install 'fewclip[hf]'"
        ) from e
    src = os.fspath(source)
    name = name or f"hf:{src}"
    local = Path(src).is_dir()
    kw: dict[str, Any] = {"cache_dir": os.fspath(cache_dir) if cache_dir is not None else None}
    if local or constants.HF_HUB_OFFLINE:
        kw["local_files_only"] = True
    try:
        config = AutoConfig.from_pretrained(src, **kw)
    except Exception as e:
        raise _hf_error(src, name, cache_dir, e) from e
    if config.model_type not in _SUPPORTED:
        raise BackboneError(
            f"Model {name!r}: expected a transformers model of type {_SUPPORTED}, found "
            f"{config.model_type!r}"
        )
    try:
        model = AutoModel.from_pretrained(src, **kw)
        tokenizer = AutoTokenizer.from_pretrained(src, **kw)
        pp_path = transformers.utils.cached_file(src, "preprocessor_config.json", **kw)
    except Exception as e:
        raise _hf_error(src, name, cache_dir, e) from e
    pp: dict[str, Any] = {}
    if pp_path is not None:
        with open(pp_path, encoding="utf-8") as f:
            pp = json.load(f)
    preprocess = preprocess_from_hf(pp, config.model_type, int(config.vision_config.image_size))
    model.eval()
    digest = state_dict_digest(model)
    model.to(torch.device(device))
    if precision in ("fp16", "bf16"):
        model.to(torch.float16 if precision == "fp16" else torch.bfloat16)
    return HFBackbone(
        name=name,
        model=model,
        tokenizer=tokenizer,
        preprocess=preprocess,
        weights=digest,
        device=device,
        precision=precision,
        augment=augment,
    )
