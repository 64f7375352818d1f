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

CLIP models also open their text encoder for prompt learning (:class:`HFTextTower`,
``backbone.text_tower()``); SigLIP's text encoder is not causal and has none.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fewclip.backbones.base import (
    Backbone,
    BackboneError,
    HubMiss,
    WeightsNotFoundError,
    cached_hub_file,
    first_line,
    hub_cache_dir,
    hub_download_blocker,
    hub_file_reachable,
    missing_files_message,
    state_dict_digest,
)
from fewclip.backbones.transforms import OPENAI_MEAN, OPENAI_STD, Augment, Preprocess
from fewclip.text_tower import TextTower

__all__ = ["HFBackbone", "HFTextTower", "load_hf", "local_hf_names"]

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


class HFTextTower(TextTower):
    """:class:`~fewclip.text_tower.TextTower` over a transformers ``CLIPModel``'s text parts:
    ``text_model.embeddings`` (token and position embeddings), ``text_model.encoder`` run with
    the causal mask, ``text_model.final_layer_norm`` and ``text_projection``.

    The pooled position is the one ``CLIPModel.get_text_features`` pools: the first
    ``eos_token_id`` of each prompt, or the largest token id for configs written before
    transformers fixed ``eos_token_id`` (it is 2 there), as OpenAI CLIP does. Prompts are
    tokenized by the model's tokenizer, padded to the context length. It shares the model's
    (frozen) weights.
    """

    def __init__(self, model: Any, tokenizer: Any, context_length: int, logit_scale: float):
        super().__init__()
        config: Any = model.config
        if str(config.model_type) != "clip" or not hasattr(model, "text_projection"):
            raise BackboneError(
                f"{type(model).__name__} ({config.model_type}): prompt learning needs a CLIP "
                "text transformer (causal, pooled at the end-of-text token); "
                f"{config.model_type} models do not have one"
            )
        attn = str(getattr(config, "_attn_implementation", None) or "eager")
        if attn not in ("eager", "sdpa"):
            raise BackboneError(
                f"{type(model).__name__}: the text tower runs with an additive causal mask, "
                f"which attn_implementation={attn!r} does not take; load the model with "
                "attn_implementation='sdpa' or 'eager'"
            )
        text = model.text_model
        self.token_embedding = text.embeddings.token_embedding
        self.positional_embedding = text.embeddings.position_embedding.weight
        self.encoder = text.encoder
        self.ln_final = text.final_layer_norm
        self.projection = model.text_projection
        self.tokenizer = tokenizer
        eos = getattr(text, "eos_token_id", None)
        self.eos_id: int | None = None if eos is None else int(eos)
        self.width = int(self.positional_embedding.shape[1])
        self.context_length = int(context_length)
        self.embed_dim = int(self.projection.out_features)
        self.logit_scale = float(logit_scale)
        # transformers 4.x takes the causal mask as causal_attention_mask, 5.x as attention_mask
        self._legacy = "causal_attention_mask" in inspect.signature(self.encoder.forward).parameters

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        enc = self.tokenizer(
            list(texts),
            padding="max_length",
            truncation=True,
            max_length=self.context_length,
            return_tensors="pt",
        )
        out: Tensor = enc["input_ids"]
        return out

    def embed(self, tokens: Tensor) -> Tensor:
        out: Tensor = self.token_embedding(tokens)
        return out

    def eot_index(self, tokens: Tensor) -> Tensor:
        if self.eos_id in (None, 2):  # configs before transformers#24773: OpenAI's argmax
            return tokens.argmax(dim=-1)
        return tokens.eq(self.eos_id).int().argmax(dim=-1)

    def _blocks(self, x: Tensor, mask: Tensor) -> Tensor:
        mask4 = mask[None, None]  # (1, 1, L, L), broadcast over the batch and the heads
        if self._legacy:
            out = self.encoder(inputs_embeds=x, causal_attention_mask=mask4, return_dict=True)
        else:
            out = self.encoder(inputs_embeds=x, attention_mask=mask4)
        hidden: Tensor = out.last_hidden_state
        return hidden

    def _project(self, pooled: Tensor) -> Tensor:
        out: Tensor = self.projection(pooled)
        return out


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

    def text_tower(self) -> TextTower:
        """The CLIP text encoder below the tokenizer (for prompt learning; see
        :mod:`fewclip.text_tower`); SigLIP models raise :class:`BackboneError`."""
        if self.model_type != "clip":
            raise BackboneError(
                f"{self.name}: this {self.model_type} model's text encoder is not causal and is "
                "not pooled at an end-of-text token, so it cannot run CoOp and its successors "
                "(they need a CLIP model: open_clip or transformers CLIP)"
            )
        return HFTextTower(self.model, self.tokenizer, self.context_length, self.logit_scale)


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


_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_NEEDED = (
    ("config.json", ("config.json",)),
    ("model.safetensors (or pytorch_model.bin)", _WEIGHTS),
    ("tokenizer_config.json", ("tokenizer_config.json", "tokenizer.json")),
)
"""(name in messages, any of these files) for each file a transformers model needs."""


def _missing_in_cache(repo: str, cache_dir: str | os.PathLike | None) -> list[str]:
    """The needed files of Hub ``repo`` that are not in the Hugging Face cache (no network)."""
    return [label for label, files in _NEEDED if cached_hub_file(repo, files, cache_dir) is None]


def _download_blocker(repo: str, missing: list[str]) -> HubMiss | None:
    """Why transformers could not download ``repo`` right now, or ``None`` when it may try.

    Besides offline mode and the connectivity probe, one metadata request (no retries) for
    config.json makes sure transformers never enters huggingface_hub's retry loop."""
    blocker = hub_download_blocker()
    if blocker is not None or not missing:
        return blocker
    _, reason = hub_file_reachable(repo, "config.json")
    return None if reason is None else HubMiss(reason)


def _hf_error(
    src: str,
    name: str,
    *,
    local: bool,
    cache_dir: str | os.PathLike | None,
    blocker: HubMiss | None,
    e: Exception,
) -> BackboneError:
    if local:
        return WeightsNotFoundError(
            f"Model {name!r} cannot be loaded from the folder {src} ({first_line(e)}). The folder "
            "must hold a transformers CLIP or SigLIP model as save_pretrained writes it: "
            "config.json, model.safetensors, the tokenizer files and preprocessor_config.json."
        )
    missing = _missing_in_cache(src, cache_dir)
    if not missing:
        return BackboneError(
            f"Model {name!r}: transformers could not load {src} from the Hugging Face cache "
            f"{hub_cache_dir(cache_dir)}: {first_line(e)}"
        )
    miss = blocker or HubMiss(f"transformers could not download them ({first_line(e)})")
    return WeightsNotFoundError(
        missing_files_message(
            model=f"{name!r} (transformers)",
            what="model files",
            filenames=missing,
            repo=src,
            cache=hub_cache_dir(cache_dir),
            miss=miss,
            any_of=False,
            remedies=(
                "To load it from local files instead, pass -b hf:PATH, where PATH is a folder "
                f"holding the files of {src} (config.json, model.safetensors, the tokenizer files "
                "and preprocessor_config.json, as save_pretrained writes them); or set HF_HOME "
                f"(or HF_HUB_CACHE) to a Hugging Face cache that already holds {src}."
            ),
        )
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

    A Hub id is read from the Hugging Face cache; transformers downloads missing files only
    when offline mode is off and the Hub answers (see
    :func:`fewclip.backbones.base.hub_download_blocker`), so a missing model fails fast.

    Raises:
        BackboneError: transformers missing, or the model is not CLIP/SigLIP.
        WeightsNotFoundError: not in the folder/cache and not downloadable.
    """
    try:
        import transformers
        from transformers import AutoConfig, AutoModel, AutoTokenizer
    except ImportError as e:
        raise BackboneError(
            "transformers backbones need the 'hf' extra: pip install 'fewclip[hf]'"
        ) from e
    src = os.fspath(source)
    name = name or f"hf:{src}"
    local = Path(src).is_dir()
    if not local:
        from huggingface_hub.utils import validate_repo_id

        try:
            validate_repo_id(src)
        except ValueError as e:
            raise WeightsNotFoundError(
                f"Model {name!r}: {src} is neither an existing folder nor a Hugging Face "
                "repository id such as openai/clip-vit-base-patch16."
            ) from e
    kw: dict[str, Any] = {"cache_dir": os.fspath(cache_dir) if cache_dir is not None else None}
    blocker = None if local else _download_blocker(src, _missing_in_cache(src, cache_dir))
    if local or blocker is not None:
        kw["local_files_only"] = True

    def fail(e: Exception) -> BackboneError:
        return _hf_error(src, name, local=local, cache_dir=cache_dir, blocker=blocker, e=e)

    try:
        config = AutoConfig.from_pretrained(src, **kw)
    except Exception as e:
        raise fail(e) from e
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
        raise fail(e) from e
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


def local_hf_names(cache_dir: str | os.PathLike | None = None) -> list[str]:
    """``"hf:org/repo"`` for every transformers CLIP/SigLIP model whose config, weights and
    tokenizer are in the Hugging Face cache (empty without transformers). Reads the cache only:
    no network, no model construction."""
    import importlib.util

    if importlib.util.find_spec("transformers") is None:
        return []
    cache = hub_cache_dir(cache_dir)
    try:
        entries = sorted(os.listdir(cache))
    except OSError:
        return []
    names = []
    for entry in entries:
        if not entry.startswith("models--"):
            continue
        repo = entry[len("models--") :].replace("--", "/")
        config_path = cached_hub_file(repo, ["config.json"], cache_dir)
        if config_path is None or _missing_in_cache(repo, cache_dir):
            continue
        try:
            with open(config_path, encoding="utf-8") as f:
                model_type = json.load(f).get("model_type")
        except (OSError, ValueError, AttributeError):
            continue
        if model_type in _SUPPORTED:
            names.append(f"hf:{repo}")
    return names
