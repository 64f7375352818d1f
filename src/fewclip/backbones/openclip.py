"""open_clip backbones: any open_clip architecture and weights, offline-first.

How a name is resolved (see :func:`load_open_clip`):

- an OpenAI name (``"ViT-B/16"``, ``"RN50"``, ...) → the ``-quickgelu`` architecture with the
  ``openai`` tag (:data:`fewclip.backbones.names.OPENAI_ALIASES`);
- an open_clip architecture (``"ViT-B-32"``) with ``pretrained=`` a tag (``"laion2b_s34b_b79k"``),
  a local checkpoint file (``.safetensors``, ``.bin``, ``.pt``) or ``"random"``;
- ``"local-dir:/folder"`` holding ``open_clip_config.json`` + ``open_clip_model.safetensors``
  (what :meth:`OpenCLIPBackbone.save_pretrained` writes);
- ``"hf-hub:org/repo"`` (an open_clip model on the Hugging Face Hub).

Weights for tags and ``hf-hub:`` ids are looked up in the Hugging Face cache first
(``cache_dir`` or ``$HF_HOME/hub``); only when they are missing, and ``HF_HUB_OFFLINE`` is not
set, are they downloaded (with the hub client's timeouts). When that fails,
:class:`~fewclip.backbones.base.WeightsNotFoundError` says which model, where fewclip looked and
how to provide local weights. fewclip never changes environment variables or global settings.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fewclip.backbones.base import (
    Backbone,
    BackboneError,
    WeightsNotFoundError,
    state_dict_digest,
)
from fewclip.backbones.names import OPENAI_ALIASES
from fewclip.backbones.transforms import Augment, Preprocess

__all__ = ["RANDOM", "OpenCLIPBackbone", "load_open_clip"]

RANDOM = "random"
"""``pretrained=RANDOM`` builds an architecture with random (seeded) weights."""

_PREPROCESS_KEYS = ("size", "mean", "std", "interpolation", "resize_mode", "fill_color")
_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def _how_to_fix(name: str) -> str:
    return (
        "To use local weights instead:\n"
        f"  - a checkpoint file: fewclip.backbones.load('<architecture>', "
        "pretrained='/path/to/weights.safetensors' or '.bin'/'.pt');\n"
        "  - a folder: fewclip.backbones.load('local-dir:/path/to/folder') with "
        "open_clip_config.json + open_clip_model.safetensors;\n"
        "  - or put the files in the Hugging Face cache (set HF_HOME, or pass cache_dir=) on a "
        f"machine with internet: python -c \"import fewclip.backbones as b; b.load('{name}')\""
    )


def _offline() -> bool:
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover - huggingface_hub comes with open_clip
        return True


def _hub_cache(cache_dir: str | os.PathLike | None) -> str:
    if cache_dir is not None:
        return os.fspath(cache_dir)
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except ImportError:  # pragma: no cover
        return "~/.cache/huggingface/hub"


def fetch_hub_file(
    repo: str,
    filenames: Sequence[str],
    *,
    model: str,
    cache_dir: str | os.PathLike | None = None,
    what: str = "weights",
) -> str:
    """Path of the first of ``filenames`` found for Hub ``repo``: the local cache first, then a
    download unless offline. Raises :class:`WeightsNotFoundError` naming every place tried."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cache = _hub_cache(cache_dir)
    cd = os.fspath(cache_dir) if cache_dir is not None else None
    for fn in filenames:
        hit = try_to_load_from_cache(repo, fn, cache_dir=cd)
        if isinstance(hit, str) and os.path.isfile(hit):
            return hit
    looked = [f"Hugging Face cache {cache}: {repo}/{fn}" for fn in filenames]
    if _offline():
        reason = "HF_HUB_OFFLINE is set, so fewclip did not try to download"
    else:
        errors = []
        for fn in filenames:
            try:
                return str(hf_hub_download(repo, fn, cache_dir=cd, etag_timeout=10))
            except Exception as e:  # network, 404, gated repo, ...
                errors.append(f"{repo}/{fn}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
        reason = "download failed:\n    " + "\n    ".join(errors)
    raise WeightsNotFoundError(
        f"Model {model!r}: {what} not found locally and not downloaded.\n"
        "fewclip looked in:\n  " + "\n  ".join(looked) + f"\n{reason}.\n" + _how_to_fix(model)
    )


class OpenCLIPBackbone(Backbone):
    """A backbone built on open_clip. ``model`` and ``tokenizer`` are open_clip's own objects."""

    family = "open_clip"

    def __init__(
        self,
        *,
        name: str,
        model: nn.Module,
        tokenizer: Any,
        model_cfg: dict[str, Any],
        arch_name: str,
        weights: str,
        preprocess: Preprocess,
        device: str | torch.device = "cpu",
        precision: str = "amp",
        augment: Augment | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.model_cfg = model_cfg
        super().__init__(
            name=name,
            model=model,
            preprocess=preprocess,
            arch={"model_cfg": model_cfg},
            arch_name=arch_name,
            weights=weights,
            device=device,
            precision=precision,
            augment=augment,
        )
        self._embed_dim = int(model_cfg["embed_dim"])

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

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        """Token ids (T, context_length) from the model's own tokenizer."""
        out: Tensor = self.tokenizer(list(texts))
        return out

    def _encode_images(self, x: Tensor) -> Tensor:
        out: Tensor = self.model.encode_image(x, normalize=False)
        return out

    def _encode_texts(self, texts: list[str]) -> Tensor:
        tokens = self.tokenize(texts).to(self.device)
        out: Tensor = self.model.encode_text(tokens, normalize=False)
        return out

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write ``open_clip_config.json`` + ``open_clip_model.safetensors`` into ``folder``.

        The folder loads back with ``fewclip.backbones.load("local-dir:<folder>")`` (or plain
        ``open_clip.create_model("local-dir:<folder>")``) and gives the same features.
        """
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {
            k: v.detach().to("cpu").float().contiguous() for k, v in self.model.state_dict().items()
        }
        config = {"model_cfg": self.model_cfg, "preprocess_cfg": self.preprocess.to_dict()}
        _atomic_write_text(folder / "open_clip_config.json", json.dumps(config, indent=2))
        tmp = folder / f".open_clip_model.safetensors.tmp{os.getpid()}"
        save_file(state, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, folder / "open_clip_model.safetensors")
        return folder


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with _suppress():
            os.unlink(tmp)
        raise


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return True


def _finish(
    model: Any,
    *,
    name: str,
    tokenizer: Any,
    model_cfg: dict[str, Any],
    arch_name: str,
    device: str | torch.device,
    precision: str,
    augment: Augment | None,
) -> OpenCLIPBackbone:
    """Fingerprint the fp32 CPU weights, then move/cast the model and wrap it."""
    from open_clip.model import convert_weights_to_lp

    model.eval()
    digest = state_dict_digest(model)
    preprocess = Preprocess.from_open_clip(dict(model.visual.preprocess_cfg))
    model.to(torch.device(device))
    if precision in ("fp16", "bf16"):
        convert_weights_to_lp(model, dtype=torch.float16 if precision == "fp16" else torch.bfloat16)
    return OpenCLIPBackbone(
        name=name,
        model=model,
        tokenizer=tokenizer,
        model_cfg=model_cfg,
        arch_name=arch_name,
        weights=digest,
        preprocess=preprocess,
        device=device,
        precision=precision,
        augment=augment,
    )


def _tokenizer(source: str, model: str) -> Any:
    import open_clip

    try:
        return open_clip.get_tokenizer(source)
    except Exception as e:
        raise WeightsNotFoundError(
            f"Model {model!r}: its tokenizer could not be loaded from {source!r} "
            f"({type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}). "
            "SigLIP and HF-text-tower models need their Hugging Face tokenizer files in the "
            "Hugging Face cache (HF_HOME or cache_dir).\n" + _how_to_fix(model)
        ) from e


def _create(model_name: str, *, user_name: str, **kwargs: Any) -> nn.Module:
    import open_clip

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*QuickGELU mismatch.*")
            model: nn.Module = open_clip.create_model(model_name, device="cpu", **kwargs)
        return model
    except (OSError, ValueError) as e:
        text = str(e)
        if any(s in text for s in ("offline", "connect", "resolve", "Hub", "hub", "huggingface")):
            raise WeightsNotFoundError(
                f"Model {user_name!r}: open_clip needed files from the Hugging Face Hub while "
                f"building {model_name!r} and could not get them ({type(e).__name__}: "
                f"{text.splitlines()[0][:300]}).\n" + _how_to_fix(user_name)
            ) from e
        raise BackboneError(
            f"Model {user_name!r}: open_clip could not build {model_name!r}: "
            f"{type(e).__name__}: {text}"
        ) from e


def load_open_clip(
    name: str,
    *,
    pretrained: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    precision: str = "amp",
    cache_dir: str | os.PathLike | None = None,
    augment: Augment | None = None,
) -> OpenCLIPBackbone:
    """Load an open_clip model (see the module docstring for accepted names).

    Raises:
        WeightsNotFoundError: weights or tokenizer files are neither local nor downloadable.
        BackboneError: unknown architecture or tag, missing ``pretrained``, bad local folder.
    """
    import open_clip

    if name.startswith("local-dir:"):
        return _load_local_dir(name, Path(name[len("local-dir:") :]), device, precision, augment)
    if name.startswith("hf-hub:"):
        repo = name[len("hf-hub:") :]
        cfg_path = fetch_hub_file(
            repo, ["open_clip_config.json"], model=name, cache_dir=cache_dir, what="config"
        )
        fetch_hub_file(repo, _WEIGHT_FILES, model=name, cache_dir=cache_dir)
        folder = Path(cfg_path).parent
        return _load_local_dir(
            name, folder, device, precision, augment, tokenizer=_tokenizer(name, name)
        )

    arch, tag = name, None if pretrained is None else os.fspath(pretrained)
    if name in OPENAI_ALIASES:
        arch, default_tag = OPENAI_ALIASES[name]
        tag = tag or default_tag
    arch = arch.replace("/", "-") if arch not in open_clip.list_models() else arch
    if arch not in open_clip.list_models():
        raise BackboneError(
            f"Model {name!r}: not an open_clip architecture, OpenAI name or fewclip tiny model. "
            f"OpenAI names: {sorted(OPENAI_ALIASES)}; open_clip architectures: "
            "open_clip.list_models(); also accepted: 'local-dir:/folder', 'hf-hub:org/repo', "
            "'hf:<transformers id or folder>', a local folder, 'fewclip-tiny-vit'."
        )
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if tag is None:
        raise BackboneError(
            f"Model {name!r}: no weights given. Pass pretrained= one of the tags {tags}, a local "
            f"checkpoint file, or {RANDOM!r} for random weights."
        )
    tag_cfg = open_clip.get_pretrained_cfg(arch, tag) if tag != RANDOM else {}
    # The silent-wrong-features case: plain GELU architecture with QuickGELU weights.
    quick = tag_cfg.get("quick_gelu") and not arch.endswith("-quickgelu")
    if quick and f"{arch}-quickgelu" in open_clip.list_models():
        arch = f"{arch}-quickgelu"
    model_cfg = open_clip.get_model_config(arch)
    kwargs: dict[str, Any] = {}
    if tag == RANDOM:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = _create(arch, user_name=name, pretrained=None, pretrained_text=False)
    elif tag_cfg:
        ckpt = _fetch_tag(name, arch, tag, tag_cfg, cache_dir)
        kwargs["force_preprocess_cfg"] = {k: tag_cfg[k] for k in _PREPROCESS_KEYS if k in tag_cfg}
        if tag_cfg.get("quick_gelu"):
            kwargs["force_quick_gelu"] = True
            model_cfg["quick_gelu"] = True
        model = _create(arch, user_name=name, pretrained=ckpt, **kwargs)
    elif os.path.isfile(tag):
        model = _create(arch, user_name=name, pretrained=tag)
    else:
        raise BackboneError(
            f"Model {name!r}: pretrained={tag!r} is neither a known tag of {arch!r} "
            f"({tags}) nor an existing file"
        )
    return _finish(
        model,
        name=name,
        tokenizer=_tokenizer(arch, name),
        model_cfg=model_cfg,
        arch_name=arch,
        device=device,
        precision=precision,
        augment=augment,
    )


def _fetch_tag(
    name: str,
    arch: str,
    tag: str,
    tag_cfg: dict[str, Any],
    cache_dir: str | os.PathLike | None,
) -> str:
    if tag_cfg.get("file"):
        return str(tag_cfg["file"])
    hub = tag_cfg.get("hf_hub", "")
    if not hub:
        url = tag_cfg.get("url", "")
        local = Path(cache_dir or Path.home() / ".cache" / "clip") / os.path.basename(url)
        if local.is_file():
            return str(local)
        raise WeightsNotFoundError(
            f"Model {name!r} ({arch}, tag {tag!r}): weights not found at {local} "
            f"(download URL {url}).\n" + _how_to_fix(name)
        )
    if hub.endswith("/"):
        repo, filenames = hub[:-1], list(_WEIGHT_FILES)
    else:
        repo, filename = os.path.split(hub)
        filenames = [filename]
        if not filename.endswith(".safetensors"):
            filenames.insert(0, filename.rsplit(".", 1)[0] + ".safetensors")
    return fetch_hub_file(
        repo, filenames, model=f"{name} ({arch}, tag {tag!r})", cache_dir=cache_dir
    )


def _load_local_dir(
    name: str,
    folder: Path,
    device: str | torch.device,
    precision: str,
    augment: Augment | None,
    tokenizer: Any = None,
) -> OpenCLIPBackbone:
    config_path = folder / "open_clip_config.json"
    if not folder.is_dir():
        raise WeightsNotFoundError(f"Model {name!r}: folder {folder} does not exist")
    if not config_path.is_file():
        hint = (
            " It holds a transformers config.json: load it with 'hf:" + str(folder) + "'."
            if (folder / "config.json").is_file()
            else ""
        )
        raise WeightsNotFoundError(
            f"Model {name!r}: expected {config_path} (open_clip_config.json with a 'model_cfg' "
            f"entry) next to open_clip_model.safetensors, found no such file.{hint}"
        )
    weights = [p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pth", ".pt")]
    if not weights:
        raise WeightsNotFoundError(
            f"Model {name!r}: {folder} has a config but no weights file (expected "
            "open_clip_model.safetensors); fewclip refuses to fall back to random weights."
        )
    with open(config_path, encoding="utf-8") as f:
        model_cfg = json.load(f).get("model_cfg")
    if not isinstance(model_cfg, dict):
        raise BackboneError(f"Model {name!r}: {config_path} has no 'model_cfg' object")
    model = _create(f"local-dir:{folder}", user_name=name)
    if tokenizer is None:
        tokenizer = _tokenizer(f"local-dir:{folder}", name)
    return _finish(
        model,
        name=name,
        tokenizer=tokenizer,
        model_cfg=model_cfg,
        arch_name=f"local-dir:{folder.name}",
        device=device,
        precision=precision,
        augment=augment,
    )
