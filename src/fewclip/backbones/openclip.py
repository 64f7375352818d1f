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
(``cache_dir`` or ``$HF_HUB_CACHE``, default ``$HF_HOME/hub``). Only when they are missing does
fewclip try a download, and only in a way that fails fast: never with ``HF_HUB_OFFLINE`` set,
never when a 2 s TCP probe cannot reach the Hub (``HF_ENDPOINT``) or the proxy, and only after
one metadata request without retries has found the file (see
:func:`fewclip.backbones.base.fetch_hub_file`). When that fails,
:class:`~fewclip.backbones.base.WeightsNotFoundError` says, in one paragraph, which model and
files, where fewclip looked, why it did not download them and which command-line options point
it at local weights. fewclip never changes environment variables or global settings.
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fewclip._io import atomic_write, file_mode
from fewclip.backbones.base import (
    Backbone,
    BackboneError,
    HubMiss,
    UnknownBackboneError,
    WeightsNotFoundError,
    cached_hub_file,
    first_line,
    hub_cache_dir,
    hub_download_blocker,
    missing_files_message,
    state_dict_digest,
)
from fewclip.backbones.base import fetch_hub_file as _fetch_hub_file
from fewclip.backbones.names import OPENAI_ALIASES, TINY_NAMES
from fewclip.backbones.transforms import Augment, Preprocess
from fewclip.text_tower import TextTower

__all__ = [
    "RANDOM",
    "OpenCLIPBackbone",
    "fetch_hub_file",
    "load_open_clip",
    "local_open_clip_names",
]

RANDOM = "random"
"""``pretrained=RANDOM`` builds an architecture with random (seeded) weights."""

_PREPROCESS_KEYS = ("size", "mean", "std", "interpolation", "resize_mode", "fill_color")
_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")
_CACHE_REMEDY = "set HF_HOME (or HF_HUB_CACHE) to a Hugging Face cache that already holds {repo}"


def _local_dir_remedy(holding: str) -> str:
    return f"pass -b local-dir:PATH, where PATH is a folder holding {holding}"


def _tag_remedies(name: str, arch: str, tag: str, tag_cfg: dict[str, Any], repo: str) -> str:
    """Command-line ways to load ``name`` (resolved to ``arch`` + ``tag``) from local files."""
    flag_name = name if name in OPENAI_ALIASES else arch
    url = str(tag_cfg.get("url") or "")
    example = f", such as {os.path.basename(url)} from {url}" if tag == "openai" and url else ""
    return (
        "To load it from local files instead, "
        + _local_dir_remedy(
            "an open_clip model (open_clip_config.json and open_clip_model.safetensors)"
        )
        + f"; or pass -b {flag_name} --pretrained FILE, where FILE is a local {arch} checkpoint "
        f"(.safetensors, .bin or .pt){example}; or " + _CACHE_REMEDY.format(repo=repo) + "."
    )


def _hub_remedies(repo: str) -> str:
    """Command-line ways to load ``hf-hub:repo`` from local files."""
    return (
        "To load it from local files instead, "
        + _local_dir_remedy(
            f"the files of {repo} (open_clip_config.json, open_clip_model.safetensors and its "
            "tokenizer files, if it has any)"
        )
        + "; or "
        + _CACHE_REMEDY.format(repo=repo)
        + "."
    )


def fetch_hub_file(
    repo: str,
    filenames: Sequence[str],
    *,
    model: str,
    remedies: str,
    cache_dir: str | os.PathLike | None = None,
    what: str = "weights",
) -> str:
    """Path of the first of ``filenames`` of Hub ``repo``: the local cache first, then a
    download that fails fast (see :func:`fewclip.backbones.base.fetch_hub_file`).

    Raises:
        WeightsNotFoundError: one paragraph naming ``model``, the files, the cache folder, why
            nothing was downloaded, and ``remedies``.
    """
    try:
        return _fetch_hub_file(repo, filenames, cache_dir=cache_dir)
    except HubMiss as miss:
        raise WeightsNotFoundError(
            missing_files_message(
                model=model,
                what=what,
                filenames=filenames,
                repo=repo,
                cache=hub_cache_dir(cache_dir),
                miss=miss,
                remedies=remedies,
            )
        ) from miss


class OpenCLIPTextTower(TextTower):
    """:class:`~fewclip.text_tower.TextTower` over an open_clip CLIP model's text parts
    (``token_embedding``, ``positional_embedding``, ``transformer``, ``ln_final``,
    ``text_projection``); the EOT position follows the model's ``text_pool_type``."""

    def __init__(self, model: Any, tokenizer: Any, logit_scale: float) -> None:
        super().__init__()
        pool = getattr(model, "text_pool_type", "argmax")
        if pool not in ("argmax", "eos") or not hasattr(model, "token_embedding"):
            raise BackboneError(
                f"{type(model).__name__}: prompt learning needs a CLIP-style text transformer "
                f"pooled at the end-of-text token (this model pools by {pool!r})"
            )
        self.token_embedding = model.token_embedding
        self.positional_embedding = model.positional_embedding
        self.transformer = model.transformer
        self.ln_final = model.ln_final
        self.projection = model.text_projection
        self.tokenizer = tokenizer
        self.pool = pool
        self.eos_id: int | None = getattr(model, "text_eos_id", None)
        self.width = int(self.positional_embedding.shape[1])
        self.context_length = int(self.positional_embedding.shape[0])
        self.embed_dim = int(
            self.projection.out_features
            if isinstance(self.projection, nn.Linear)
            else self.projection.shape[1]
        )
        self.logit_scale = float(logit_scale)

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        out: Tensor = self.tokenizer(list(texts))
        return out

    def embed(self, tokens: Tensor) -> Tensor:
        out: Tensor = self.token_embedding(tokens)
        return out

    def eot_index(self, tokens: Tensor) -> Tensor:
        if self.pool == "eos":
            return tokens.eq(self.eos_id if self.eos_id is not None else -1).int().argmax(dim=-1)
        return tokens.argmax(dim=-1)

    def _blocks(self, x: Tensor, mask: Tensor) -> Tensor:
        out: Tensor = self.transformer(x, attn_mask=mask)
        return out

    def _project(self, pooled: Tensor) -> Tensor:
        if isinstance(self.projection, nn.Linear):
            out: Tensor = self.projection(pooled)
            return out
        return pooled @ self.projection.to(pooled.dtype)


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

    def text_tower(self) -> TextTower:
        """The model's text encoder below the tokenizer (for prompt learning; see
        :mod:`fewclip.text_tower`). It shares the model's (frozen) weights."""
        return OpenCLIPTextTower(self.model, self.tokenizer, self.logit_scale)

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
        atomic_write(folder / "open_clip_config.json", json.dumps(config, indent=2))
        tmp = folder / f".open_clip_model.safetensors.tmp{os.getpid()}"
        save_file(state, str(tmp), metadata={"format": "pt"})
        os.chmod(tmp, file_mode())
        os.replace(tmp, folder / "open_clip_model.safetensors")
        return folder


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


def _tokenizer(source: str, model: str, cache_dir: str | os.PathLike | None = None) -> Any:
    import open_clip

    cd = os.fspath(cache_dir) if cache_dir is not None else None
    try:
        return open_clip.get_tokenizer(source, cache_dir=cd)
    except Exception as e:
        raise WeightsNotFoundError(
            f"Model {model!r} cannot be loaded because its tokenizer could not be loaded from "
            f"{source} ({first_line(e)}). Models with a Hugging Face tokenizer (SigLIP, "
            "multilingual and other HF-text-tower models) need its files in the Hugging Face "
            f"cache {hub_cache_dir(cache_dir)}: set HF_HOME (or HF_HUB_CACHE) to a cache that "
            "holds them, or pass -b local-dir:PATH, where PATH is a folder holding "
            "open_clip_config.json, open_clip_model.safetensors and the tokenizer files."
        ) from e


def _require_text_files(
    model_cfg: dict[str, Any], *, model: str, cache_dir: str | os.PathLike | None
) -> None:
    """Fail fast when the model's Hugging Face tokenizer or text-tower configuration is neither
    cached nor downloadable (open_clip would otherwise try the Hub with its retries)."""
    text_cfg = model_cfg.get("text_cfg") or {}
    # open_clip reads the tokenizer from cache_dir, a text tower's config from the default cache.
    wanted = [
        (
            str(text_cfg.get("hf_tokenizer_name") or ""),
            _TOKENIZER_FILES,
            "tokenizer files",
            cache_dir,
        ),
        (str(text_cfg.get("hf_model_name") or ""), ("config.json",), "text-tower files", None),
    ]
    for repo, files, what, cd in wanted:
        if not repo or Path(repo).is_dir() or cached_hub_file(repo, files, cd) is not None:
            continue
        blocker = hub_download_blocker()
        if blocker is None:
            return  # open_clip downloads them
        raise WeightsNotFoundError(
            missing_files_message(
                model=model,
                what=what,
                filenames=files,
                repo=repo,
                cache=hub_cache_dir(cd),
                miss=blocker,
                remedies="To load it from local files instead, "
                + _local_dir_remedy(
                    "open_clip_config.json, open_clip_model.safetensors and the tokenizer files"
                )
                + "; or "
                + _CACHE_REMEDY.format(repo=repo)
                + ".",
            )
        )


def _is_torchscript(path: str) -> bool:
    """Whether ``path`` is a TorchScript archive, such as OpenAI's own ``RN50.pt``."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _create(model_name: str, *, user_name: str, **kwargs: Any) -> nn.Module:
    import open_clip

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*QuickGELU mismatch.*")
            warnings.filterwarnings("ignore", message=".*TorchScript archive.*")
            warnings.filterwarnings("ignore", message=".*torch.jit.load.* is deprecated.*")
            model: nn.Module = open_clip.create_model(model_name, device="cpu", **kwargs)
        return model
    except (OSError, ValueError) as e:
        text = str(e)
        if any(s in text for s in ("offline", "connect", "resolve", "Hub", "hub", "huggingface")):
            raise WeightsNotFoundError(
                f"Model {user_name!r} cannot be loaded because open_clip needed files from the "
                f"Hugging Face Hub while building {model_name} and could not get them "
                f"({first_line(e)}). Set HF_HOME (or HF_HUB_CACHE) to a Hugging Face cache "
                "that holds them, or pass -b local-dir:PATH, where PATH is a folder holding "
                "open_clip_config.json and open_clip_model.safetensors."
            ) from e
        raise BackboneError(
            f"Model {user_name!r}: open_clip could not build {model_name}: {first_line(e)}"
        ) from e
    except RuntimeError as e:  # a checkpoint that does not fit the architecture
        raise BackboneError(
            f"Model {user_name!r}: the weights do not fit the open_clip architecture "
            f"{model_name}: {first_line(e)}"
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
        remedies = _hub_remedies(repo)
        cfg_path = fetch_hub_file(
            repo,
            ["open_clip_config.json"],
            model=repr(name),
            remedies=remedies,
            cache_dir=cache_dir,
            what="open_clip configuration",
        )
        fetch_hub_file(
            repo, _WEIGHT_FILES, model=repr(name), remedies=remedies, cache_dir=cache_dir
        )
        with open(cfg_path, encoding="utf-8") as f:
            hub_cfg = json.load(f).get("model_cfg") or {}
        _require_text_files(hub_cfg, model=repr(name), cache_dir=cache_dir)
        folder = Path(cfg_path).parent
        return _load_local_dir(
            name, folder, device, precision, augment, tokenizer=_tokenizer(name, name, cache_dir)
        )

    arch, tag = name, None if pretrained is None else os.fspath(pretrained)
    if name in OPENAI_ALIASES:
        arch, default_tag = OPENAI_ALIASES[name]
        tag = tag or default_tag
    arch = arch.replace("/", "-") if arch not in open_clip.list_models() else arch
    if arch not in open_clip.list_models():
        from fewclip.errors import did_you_mean

        known = [*OPENAI_ALIASES, *TINY_NAMES, *open_clip.list_models()]
        raise UnknownBackboneError(
            f"Model {name!r}: not an OpenAI name, open_clip architecture or fewclip tiny "
            f"model{did_you_mean(name, known)}. OpenAI names: {', '.join(sorted(OPENAI_ALIASES))}; "
            "open_clip architectures: python -c 'import open_clip; print(open_clip.list_models())'"
            "; also accepted: local-dir:FOLDER, hf-hub:org/repo, hf:<transformers id or "
            "folder>, a local folder, fewclip-tiny-vit."
        )
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if tag is None:
        raise BackboneError(
            f"Model {name!r}: no weights given. Pass --pretrained (Python: pretrained=) with one "
            f"of the tags {', '.join(tags)}, a local checkpoint file, or {RANDOM} for random "
            "weights."
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
        _require_text_files(model_cfg, model=_describe(name, arch, tag), cache_dir=cache_dir)
        kwargs["force_preprocess_cfg"] = {k: tag_cfg[k] for k in _PREPROCESS_KEYS if k in tag_cfg}
        if tag_cfg.get("quick_gelu"):
            kwargs["force_quick_gelu"] = True
            model_cfg["quick_gelu"] = True
        model = _create(arch, user_name=name, pretrained=ckpt, **kwargs)
    elif os.path.isfile(tag):
        _require_text_files(model_cfg, model=repr(name), cache_dir=cache_dir)
        # OpenAI's own checkpoints (RN50.pt, ...) are TorchScript archives, which torch.load
        # refuses with weights_only=True; they hold no pickled Python objects.
        model = _create(arch, user_name=name, pretrained=tag, weights_only=not _is_torchscript(tag))
    else:
        raise BackboneError(
            f"Model {name!r}: pretrained={tag!r} is neither a known tag of {arch!r} "
            f"({tags}) nor an existing file"
        )
    return _finish(
        model,
        name=name,
        tokenizer=_tokenizer(arch, name, cache_dir),
        model_cfg=model_cfg,
        arch_name=arch,
        device=device,
        precision=precision,
        augment=augment,
    )


def _describe(name: str, arch: str, tag: str) -> str:
    """``'RN50' (open_clip RN50-quickgelu with the openai weights)``."""
    return f"{name!r} (open_clip {arch} with the {tag} weights)"


def _tag_source(tag_cfg: dict[str, Any]) -> tuple[str, list[str]] | None:
    """``(repo, filenames)`` a tag's weights come from on the Hub (any one file will do), or
    ``None`` when the tag has no Hub location (a local file or a plain URL)."""
    hub = str(tag_cfg.get("hf_hub") or "")
    if not hub:
        return None
    if hub.endswith("/"):
        return hub[:-1], list(_WEIGHT_FILES)
    repo, filename = hub.rsplit("/", 1)
    filenames = [filename]
    if not filename.endswith(".safetensors"):
        filenames.insert(0, filename.rsplit(".", 1)[0] + ".safetensors")
    return repo, filenames


def _url_file(tag_cfg: dict[str, Any], cache_dir: str | os.PathLike | None) -> Path:
    """Where a URL-only tag's checkpoint is expected locally (open_clip's own download folder)."""
    url = str(tag_cfg.get("url") or "")
    return Path(cache_dir or Path.home() / ".cache" / "clip") / os.path.basename(url)


def _fetch_tag(
    name: str,
    arch: str,
    tag: str,
    tag_cfg: dict[str, Any],
    cache_dir: str | os.PathLike | None,
) -> str:
    if tag_cfg.get("file"):
        return str(tag_cfg["file"])
    source = _tag_source(tag_cfg)
    if source is None:
        local = _url_file(tag_cfg, cache_dir)
        if local.is_file():
            return str(local)
        flag_name = name if name in OPENAI_ALIASES else arch
        raise WeightsNotFoundError(
            f"Model {_describe(name, arch, tag)} cannot be loaded because its weights are not on "
            f"this machine: fewclip looked for {local} and did not find it, and it does not "
            f"download from plain URLs ({tag_cfg.get('url', '')}). Download that file "
            f"elsewhere and pass -b {flag_name} --pretrained FILE, or pass -b local-dir:PATH, "
            "where PATH is a folder holding an open_clip model (open_clip_config.json and "
            "open_clip_model.safetensors)."
        )
    repo, filenames = source
    return fetch_hub_file(
        repo,
        filenames,
        model=_describe(name, arch, tag),
        remedies=_tag_remedies(name, arch, tag, tag_cfg, repo),
        cache_dir=cache_dir,
    )


def _cached_repos(cache: str) -> set[str]:
    """Repository ids with a folder in the Hugging Face cache ``cache`` (no network)."""
    try:
        entries = os.listdir(cache)
    except OSError:
        return set()
    prefix = "models--"
    return {e[len(prefix) :].replace("--", "/") for e in entries if e.startswith(prefix)}


def _text_files_cached(
    model_cfg: dict[str, Any], repos: set[str], cache_dir: str | os.PathLike | None
) -> bool:
    """Whether a model's Hugging Face tokenizer / text-tower config (if any) is cached.
    ``repos`` are the repositories present in ``cache_dir``."""
    text_cfg = model_cfg.get("text_cfg") or {}
    # open_clip reads the tokenizer from cache_dir, a text tower's config from the default cache.
    for key, files, cd in (
        ("hf_tokenizer_name", _TOKENIZER_FILES, cache_dir),
        ("hf_model_name", ("config.json",), None),
    ):
        repo = str(text_cfg.get(key) or "")
        if not repo or Path(repo).is_dir():
            continue
        present = repos if cd is cache_dir else _cached_repos(hub_cache_dir(cd))
        if repo not in present or cached_hub_file(repo, files, cd) is None:
            return False
    return True


def local_open_clip_names(cache_dir: str | os.PathLike | None = None) -> list[str]:
    """open_clip models whose weights (and Hugging Face tokenizer, if any) are on this machine.

    Reads the Hugging Face cache only: no network, no model construction. Entries, in order:
    OpenAI names (``"RN50"``), then other open_clip (architecture, tag) pairs spelled
    ``"ARCH --pretrained TAG"`` (the command-line form; in Python,
    ``load(ARCH, pretrained=TAG)``), then ``"hf-hub:org/repo"`` ids. Weights shared by several
    names are listed once, under the first name.
    """
    import open_clip

    cache = hub_cache_dir(cache_dir)
    repos = _cached_repos(cache)
    seen: set[str] = set()
    names: list[str] = []

    def weights_key(arch: str, tag: str) -> str | None:
        """An id of the tag's weights when they are local, else ``None``."""
        cfg = open_clip.get_pretrained_cfg(arch, tag)
        if not cfg:
            return None
        if cfg.get("file"):
            return str(cfg["file"]) if os.path.isfile(str(cfg["file"])) else None
        source = _tag_source(cfg)
        if source is None:
            local = _url_file(cfg, cache_dir)
            return str(local) if local.is_file() else None
        repo, files = source
        if repo not in repos or cached_hub_file(repo, files, cache_dir) is None:
            return None
        model_cfg = open_clip.get_model_config(arch) or {}
        return repo if _text_files_cached(model_cfg, repos, cache_dir) else None

    candidates = [(alias, arch, tag) for alias, (arch, tag) in OPENAI_ALIASES.items()]
    candidates += [(f"{a} --pretrained {t}", a, t) for a, t in open_clip.list_pretrained()]
    for entry, arch, tag in candidates:
        key = weights_key(arch, tag)
        if key is not None and key not in seen:
            seen.add(key)
            names.append(entry)
    for repo in sorted(repos - seen):
        cfg_path = cached_hub_file(repo, ["open_clip_config.json"], cache_dir)
        if cfg_path is None or cached_hub_file(repo, _WEIGHT_FILES, cache_dir) is None:
            continue
        try:
            with open(cfg_path, encoding="utf-8") as f:
                model_cfg = json.load(f).get("model_cfg")
        except (OSError, ValueError):
            continue
        if isinstance(model_cfg, dict) and _text_files_cached(model_cfg, repos, cache_dir):
            names.append(f"hf-hub:{repo}")
    return names


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
