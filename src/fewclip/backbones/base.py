"""The Backbone interface every model adapter implements, and shared helpers.

A backbone turns preprocessed image batches and prompt strings into **raw, un-normalised**
features. Everything model-specific (open_clip, transformers) lives in a subclass; everything
else in fewclip (extraction, the store, text weights) only uses this interface.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
import time
import urllib.parse
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from fewclip.backbones.transforms import Augment, AugmentTransform, Preprocess
from fewclip.errors import FewclipError, InvalidTypeError, InvalidValueError, UnknownNameError
from fewclip.text_tower import TextTower

__all__ = [
    "HUB_PROBE_TIMEOUT",
    "PRECISIONS",
    "Backbone",
    "BackboneError",
    "HubMiss",
    "WeightsNotFoundError",
    "cached_hub_file",
    "fetch_hub_file",
    "fingerprint",
    "first_line",
    "hub_cache_dir",
    "hub_download_blocker",
    "hub_file_reachable",
    "hub_offline_reason",
    "hub_unreachable_reason",
    "missing_files_message",
    "state_dict_digest",
]

PRECISIONS = ("amp", "fp32", "fp16", "bf16", "amp_bf16")
"""Accepted ``precision`` values.

- ``"amp"`` (default): float32 weights; on CUDA, autocast to float16. On CPU: plain float32.
- ``"amp_bf16"``: as ``"amp"`` with bfloat16 autocast on CUDA.
- ``"fp32"``: float32 everywhere, no autocast.
- ``"fp16"`` / ``"bf16"``: weights cast to half precision (OpenAI CLIP's own inference mode).
"""


class BackboneError(FewclipError, RuntimeError):
    """A backbone could not be created (unknown name, bad configuration, ...)."""


class UnknownBackboneError(BackboneError, UnknownNameError):
    """A model name that is neither an OpenAI name, an open_clip architecture nor another form
    fewclip loads; the message suggests the closest names (CLI: exit 2, a bad argument)."""


class WeightsNotFoundError(BackboneError, FileNotFoundError):
    """Weights (or tokenizer files) for a named model are not available locally and could not
    be downloaded. The message is one complete paragraph: which model, which files from which
    repository, the cache folder fewclip looked in, why it did not download them, and the
    command-line options that point fewclip at local weights."""


def state_dict_digest(module: nn.Module) -> str:
    """SHA-256 over every parameter and buffer (name, dtype, shape, bytes), in name order."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            data = t.to("cpu").contiguous()
            if data.dtype == torch.bfloat16:
                data = data.view(torch.int16)
            h.update(data.numpy().tobytes())
    return h.hexdigest()


def fingerprint(record: dict[str, Any]) -> str:
    """SHA-256 of a JSON-able record in canonical form (sorted keys, no whitespace)."""
    blob = json.dumps(record, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class Backbone(ABC):
    """A frozen CLIP-style model: images and texts in, raw features out.

    Attributes:
        name: the name the backbone was loaded by.
        family: ``"open_clip"`` or ``"hf"``.
        embed_dim: feature dimension D of both encoders.
        preprocess: evaluation preprocessing (size, resize mode, normalisation).
        augment: training augmentation parameters used for augmented views.
        device: where the model runs.
        precision: one of :data:`PRECISIONS`.

    Subclasses implement :meth:`_encode_images`, :meth:`_encode_texts`, :attr:`logit_scale` and
    fill in ``_arch`` (architecture record) and ``_weights`` (weights digest).
    """

    family: str = "base"

    def __init__(
        self,
        *,
        name: str,
        model: nn.Module,
        preprocess: Preprocess,
        arch: dict[str, Any],
        arch_name: str,
        weights: str,
        device: str | torch.device = "cpu",
        precision: str = "amp",
        augment: Augment | None = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise InvalidValueError(f"precision: expected one of {PRECISIONS}, found {precision!r}")
        self.name = name
        self.model: Any = model
        self.preprocess = preprocess
        self.augment = augment if augment is not None else Augment()
        self.device = torch.device(device)
        self.precision = precision
        self._arch = arch
        self.arch_name = arch_name
        self._id: str | None = None
        self._weights = weights
        self._eval_transform: Callable[[Image.Image], Tensor] | None = None
        self._channels_last = False
        self.to(self.device)
        self.model.eval()
        self.model.requires_grad_(False)

    def to(self, device: str | torch.device) -> Backbone:
        """Move the model to ``device`` (in place; returns ``self``). The :attr:`id` is
        unchanged; :attr:`compute_precision` follows the new device."""
        self.device = torch.device(device)
        self.model.to(self.device)
        self._channels_last = self.device.type == "cuda" and any(
            isinstance(m, nn.Conv2d) and m.kernel_size != m.stride for m in self.model.modules()
        )
        if self._channels_last:
            self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        return self

    # --- identity -------------------------------------------------------------------------
    @property
    def id(self) -> str:
        """Fingerprint of the architecture, the weights and the preprocessing.

        Two backbones with the same id compute the same features for the same input (up to the
        numerical precision recorded separately in :attr:`compute_precision`).
        """
        if self._id is None:
            digest = fingerprint(
                {
                    "family": self.family,
                    "arch": self._arch,
                    "weights": self._weights,
                    "preprocess": self.preprocess.to_dict(),
                }
            )
            self._id = f"{self.family}-{digest[:24]}"
        return self._id

    @property
    def weights_digest(self) -> str:
        """SHA-256 of the weights (see :func:`state_dict_digest`)."""
        return self._weights

    @property
    def compute_precision(self) -> str:
        """The numerics actually used: ``fp32``, ``fp16``, ``bf16``, ``amp_fp16``, ``amp_bf16``."""
        if self.precision in ("fp16", "bf16"):
            return self.precision
        if self.device.type == "cuda" and self.precision in ("amp", "amp_bf16"):
            return "amp_bf16" if self.precision == "amp_bf16" else "amp_fp16"
        return "fp32"

    def describe(self) -> dict[str, Any]:
        """A JSON-able record of this backbone (stored with every cache entry)."""
        return {
            "id": self.id,
            "name": self.name,
            "family": self.family,
            "arch_name": self.arch_name,
            "arch": self._arch,
            "weights_sha256": self._weights,
            "preprocess": self.preprocess.to_dict(),
            "augment": self.augment.to_dict(),
            "embed_dim": self.embed_dim,
            "compute_precision": self.compute_precision,
        }

    # --- model facts ----------------------------------------------------------------------
    @property
    @abstractmethod
    def embed_dim(self) -> int:
        """Feature dimension D."""

    @property
    @abstractmethod
    def logit_scale(self) -> float:
        """The model's learned logit scale (``exp`` applied; 100 for OpenAI CLIP)."""

    @property
    def logit_bias(self) -> float | None:
        """SigLIP's learned logit bias, or ``None`` for CLIP models."""
        return None

    @property
    def image_size(self) -> tuple[int, int]:
        return self.preprocess.size

    # --- transforms -----------------------------------------------------------------------
    @property
    def eval_transform(self) -> Callable[[Image.Image], Tensor]:
        """Decoded RGB PIL image → normalised (3, H, W) tensor, no randomness."""
        if self._eval_transform is None:
            self._eval_transform = self.preprocess.eval_transform()
        return self._eval_transform

    @property
    def train_transform(self) -> AugmentTransform:
        """Seeded augmentation: ``train_transform(img, generator)`` → (3, H, W) tensor."""
        return AugmentTransform(self.preprocess, self.augment)

    # --- encoding -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _compute_context(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.inference_mode())
            cp = self.compute_precision
            if cp.startswith("amp_"):
                dtype = torch.bfloat16 if cp == "amp_bf16" else torch.float16
                stack.enter_context(torch.autocast(device_type=self.device.type, dtype=dtype))
            yield

    @property
    def _input_dtype(self) -> torch.dtype:
        return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision, torch.float32)

    def encode_images(self, batch: Tensor) -> Tensor:
        """Raw image features (B, D) float32 on :attr:`device` for a preprocessed (B, 3, H, W)
        batch (the output of :attr:`eval_transform` or :attr:`train_transform`).

        Runs under ``torch.inference_mode``, with autocast and channels-last on CUDA.
        """
        if not isinstance(batch, Tensor) or batch.ndim != 4 or batch.shape[1] != 3:
            found = tuple(batch.shape) if isinstance(batch, Tensor) else type(batch).__name__
            raise InvalidValueError(f"batch: expected a (B, 3, H, W) tensor, found {found}")
        x = batch.to(self.device, dtype=self._input_dtype, non_blocking=True)
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._compute_context():
            out = self._encode_images(x)
        return out.float()

    def encode_texts(self, texts: Sequence[str], *, batch_size: int = 256) -> Tensor:
        """Raw text features (T, D) float32 on :attr:`device` for T prompt strings."""
        if isinstance(texts, str):
            raise InvalidTypeError("texts: expected a sequence of strings, found a single str")
        texts = list(texts)
        if not texts:
            return torch.empty(0, self.embed_dim, device=self.device)
        outs = []
        with self._compute_context():
            for start in range(0, len(texts), batch_size):
                outs.append(self._encode_texts(texts[start : start + batch_size]).float())
        return torch.cat(outs)

    def text_tower(self) -> TextTower:
        """The text encoder below the tokenizer, for prompt learning
        (:mod:`fewclip.text_tower`); backbones without one raise :class:`BackboneError`."""
        raise BackboneError(
            f"{self.name}: this {self.family} backbone does not open its text encoder for "
            "prompt learning (CoOp and its successors need a CLIP model from open_clip or "
            "transformers)"
        )

    @abstractmethod
    def _encode_images(self, x: Tensor) -> Tensor: ...

    @abstractmethod
    def _encode_texts(self, texts: list[str]) -> Tensor: ...

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, id={self.id!r}, "
            f"embed_dim={self.embed_dim}, device={str(self.device)!r}, "
            f"precision={self.precision!r})"
        )


# --- the Hugging Face Hub: the local cache first, a download only when the Hub answers ------
#
# huggingface_hub retries a failed download five times with back-off (about a minute of
# "Retrying in 8s" lines when there is no network). fewclip never lets it get there: it looks in
# the cache, then (unless offline mode is on) opens one TCP connection to the Hub endpoint, or to
# the proxy, with a short timeout, then asks the Hub for the file's metadata with a single
# request, and only when that answers does it call ``hf_hub_download``. A missing model
# therefore fails in about the probe's timeout at most, without retry messages.

HUB_PROBE_TIMEOUT = 2.0
"""Seconds the connectivity probe waits for a TCP connection to the Hub (or the proxy)."""

_PROBE_TTL = 30.0
_probe_results: dict[tuple[str, int], tuple[float, str | None]] = {}
_probe_lock = threading.Lock()


def text_tower_of(backbone: Backbone) -> TextTower | None:
    """``backbone.text_tower()``, or ``None`` for a backbone without one."""
    try:
        return backbone.text_tower()
    except BackboneError:
        return None


class HubMiss(FewclipError):
    """Files are not in the Hugging Face cache and were not downloaded.

    ``reason`` completes "fewclip did not download them because ..."; ``hint`` is a complete
    sentence on how a download could succeed (or ``""``). Callers turn this into a
    :class:`WeightsNotFoundError` that names the model and the remedies.
    """

    def __init__(self, reason: str, hint: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.hint = hint


def hub_cache_dir(cache_dir: str | os.PathLike | None = None) -> str:
    """The Hugging Face cache folder fewclip reads: ``cache_dir``, else ``$HF_HUB_CACHE``
    (default ``$HF_HOME/hub``), as huggingface_hub resolved it when it was imported."""
    if cache_dir is not None:
        return os.fspath(cache_dir)
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _hub_endpoint() -> str:
    from huggingface_hub import constants

    return str(constants.ENDPOINT).rstrip("/")


def hub_offline_reason() -> str | None:
    """Why downloads are switched off (a phrase such as "offline mode is on (HF_HUB_OFFLINE is
    set)"), or ``None`` when huggingface_hub may download."""
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE:
        return None
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return f"offline mode is on ({var} is set)"
    return "offline mode is on (HF_HUB_OFFLINE)"


def _proxy_for(url: str) -> str | None:
    """The proxy that an HTTP client configured from the environment would use for ``url``."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname and urllib.request.proxy_bypass(parts.hostname):
        return None
    proxies = urllib.request.getproxies_environment()
    return proxies.get(parts.scheme) or proxies.get("all") or None


def _tcp_probe(host: str, port: int, timeout: float) -> str | None:
    """``None`` when a TCP connection to ``host:port`` opens within ``timeout`` seconds, else
    a phrase saying why not. Name resolution runs in a helper thread, so a resolver that hangs
    cannot stretch the wait beyond ``timeout``."""
    result: list[str | None] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(None)
        except socket.gaierror:
            result.append(f"the name {host} does not resolve")
        except TimeoutError:
            result.append(f"no answer from {host}:{port} within {timeout:g} s")
        except ConnectionRefusedError:
            result.append(f"{host}:{port} refused the connection")
        except OSError as e:
            result.append(f"{host}:{port}: {e.strerror or type(e).__name__}")

    thread = threading.Thread(target=attempt, name="fewclip-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 0.2)
    if not result:
        return f"no answer from {host}:{port} within {timeout:g} s"
    return result[0]


def hub_unreachable_reason(timeout: float = HUB_PROBE_TIMEOUT) -> str | None:
    """``None`` when a TCP connection to the Hub endpoint (``HF_ENDPOINT``, default
    https://huggingface.co), or to the proxy the environment names for it, opens within
    ``timeout`` seconds; otherwise a phrase saying why not. Results are remembered for 30 s."""
    endpoint = _hub_endpoint()
    proxy = _proxy_for(endpoint)
    parts = urllib.parse.urlsplit(proxy or endpoint)
    default_port = {"https": 443, "http": 80}.get(parts.scheme, 1080)
    host = parts.hostname or ""
    try:
        port = parts.port or default_port
    except ValueError:
        port = default_port
    if not host:
        return f"the Hub endpoint {endpoint} has no host name"
    key = (host, port)
    now = time.monotonic()
    with _probe_lock:
        hit = _probe_results.get(key)
    if hit is not None and now - hit[0] < _PROBE_TTL:
        error = hit[1]
    else:
        error = _tcp_probe(host, port, timeout)
        with _probe_lock:
            _probe_results[key] = (time.monotonic(), error)
    if error is None:
        return None
    via = f" through the proxy {proxy}" if proxy else ""
    return f"the Hugging Face Hub at {endpoint} cannot be reached from this machine{via} ({error})"


def _unreachable_hint() -> str:
    return (
        f"To download instead, run the same command on a machine that can reach "
        f"{_hub_endpoint()} (set HTTPS_PROXY if it needs a proxy)."
    )


_OFFLINE_HINT = "To download instead, unset HF_HUB_OFFLINE on a machine with internet access."


def hub_download_blocker() -> HubMiss | None:
    """Why nothing can be downloaded right now (offline mode, or the Hub cannot be reached),
    as a :class:`HubMiss`, or ``None`` when a download may be tried."""
    reason = hub_offline_reason()
    if reason is not None:
        return HubMiss(reason, _OFFLINE_HINT)
    reason = hub_unreachable_reason()
    if reason is not None:
        return HubMiss(reason, _unreachable_hint())
    return None


def first_line(e: BaseException) -> str:
    """``"TypeName: first line of the message"``, never cut inside the line."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def cached_hub_file(
    repo: str, filenames: Sequence[str], cache_dir: str | os.PathLike | None = None
) -> str | None:
    """Path of the first of ``filenames`` of Hub ``repo`` (main revision) already in the
    Hugging Face cache, or ``None``. Reads the cache only: no network."""
    from huggingface_hub import try_to_load_from_cache

    cd = os.fspath(cache_dir) if cache_dir is not None else None
    for fn in filenames:
        try:
            hit = try_to_load_from_cache(repo, fn, cache_dir=cd)
        except ValueError:  # not a valid repository id
            return None
        if isinstance(hit, str) and os.path.isfile(hit):
            return hit
    return None


def _hub_error(e: Exception, repo: str, filename: str) -> tuple[bool, str]:
    """``(file_is_missing, reason)`` for an error from a Hub metadata request."""
    from huggingface_hub import errors

    endpoint = _hub_endpoint()
    login = "log in with hf auth login or set HF_TOKEN"
    if isinstance(e, errors.GatedRepoError):
        return False, f"{repo} is a gated repository: accept its terms on the Hub and {login}"
    if isinstance(e, errors.RepositoryNotFoundError):
        return False, f"the Hub at {endpoint} has no repository {repo}, or it is private ({login})"
    response = getattr(e, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(e, errors.EntryNotFoundError) or status == 404:
        return True, f"the Hub at {endpoint} has no file {filename} in {repo}"
    if status in (401, 403):
        return False, f"the Hub at {endpoint} refused access to {repo} (HTTP {status}; {login})"
    if status is not None:
        return False, f"the Hub at {endpoint} answered HTTP {status} for {repo}/{filename}"
    return False, f"the request to the Hub at {endpoint} failed ({type(e).__name__})"


def hub_file_reachable(repo: str, filename: str) -> tuple[bool, str | None]:
    """Ask the Hub, in one request without retries, whether it serves ``repo/filename``.

    Returns ``(file_is_missing, reason)``: ``reason`` is ``None`` when the Hub serves the file.
    """
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url

    try:
        get_hf_file_metadata(hf_hub_url(repo, filename), timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except Exception as e:  # network, 404, gated repo, ...
        return _hub_error(e, repo, filename)
    return False, None


def fetch_hub_file(
    repo: str, filenames: Sequence[str], *, cache_dir: str | os.PathLike | None = None
) -> str:
    """Path of the first of ``filenames`` of Hub ``repo``: from the Hugging Face cache, else
    downloaded, when offline mode is off, the Hub can be reached and it serves the file.

    Raises:
        HubMiss: not in the cache and not downloaded; says why.
    """
    hit = cached_hub_file(repo, filenames, cache_dir)
    if hit is not None:
        return hit
    blocker = hub_download_blocker()
    if blocker is not None:
        raise blocker
    from huggingface_hub import hf_hub_download

    for fn in filenames:
        missing, reason = hub_file_reachable(repo, fn)
        if reason is None:
            try:
                cd = os.fspath(cache_dir) if cache_dir is not None else None
                return str(hf_hub_download(repo, fn, cache_dir=cd))
            except Exception as e:
                raise HubMiss(
                    f"the download of {repo}/{fn} from {_hub_endpoint()} failed "
                    f"({type(e).__name__})"
                ) from e
        if not missing:
            raise HubMiss(reason)
    raise HubMiss(f"the Hub at {_hub_endpoint()} has {_none_of(filenames)} in {repo}")


def _none_of(filenames: Sequence[str]) -> str:
    return "no such file" if len(filenames) == 1 else "none of these files"


def or_list(items: Sequence[str]) -> str:
    """``a``, ``a or b``, ``a, b or c``."""
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


TINY_NOTE = (
    "For a quick try without any download, -b fewclip-tiny-vit runs offline, but it is a tiny "
    "untrained toy model whose results mean nothing."
)


def missing_files_message(
    *,
    model: str,
    what: str,
    filenames: Sequence[str],
    repo: str,
    cache: str,
    miss: HubMiss,
    remedies: str,
    any_of: bool = True,
) -> str:
    """The :class:`WeightsNotFoundError` text: one paragraph of complete sentences.

    Args:
        model: the model as the user named it, with what it resolved to.
        what: the missing thing ("weights", "tokenizer files", "open_clip configuration").
        filenames: the files looked for: any one of them would do (``any_of``), or all of them
            are needed and none was found.
        repo: the Hub repository they come from.
        cache: the Hugging Face cache folder that was searched.
        miss: why nothing was downloaded.
        remedies: complete sentences naming the command-line options that avoid a download.
    """
    if len(filenames) == 1:
        files, found = filenames[0], "did not find it"
    elif any_of:
        files = or_list(filenames)
        found = "found neither" if len(filenames) == 2 else "found none of them"
    else:
        files = ", ".join(filenames[:-1]) + " and " + filenames[-1]
        found = "did not find them"
    verb = "are" if what.endswith("s") else "is"
    them = "it" if len(filenames) == 1 else "them"
    parts = [
        f"Model {model} cannot be loaded because its {what} {verb} not on this machine: fewclip "
        f"looked for {files} from the Hugging Face repository {repo} in the Hugging Face cache "
        f"{cache} and {found}, and it did not download {them} because {miss.reason}.",
        remedies,
        miss.hint,
        TINY_NOTE,
    ]
    return " ".join(p.strip() for p in parts if p.strip())
