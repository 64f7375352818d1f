"""The Backbone interface every model adapter implements, and shared helpers.

A backbone turns preprocessed image batches and prompt strings into **raw, un-normalised**
features. Everything model-specific (open_clip, transformers) lives in a subclass; everything
else in fewclip (extraction, the store, text weights) only uses this interface.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from fewclip.backbones.transforms import Augment, AugmentTransform, Preprocess

__all__ = [
    "PRECISIONS",
    "Backbone",
    "BackboneError",
    "WeightsNotFoundError",
    "fingerprint",
    "state_dict_digest",
]

PRECISIONS = ("amp", "fp32", "fp16", "bf16", "amp_bf16")
"""Accepted ``precision`` values.

- ``"amp"`` (default): float32 weights; on CUDA, autocast to float16. On CPU: plain float32.
- ``"amp_bf16"``: as ``"amp"`` with bfloat16 autocast on CUDA.
- ``"fp32"``: float32 everywhere, no autocast.
- ``"fp16"`` / ``"bf16"``: weights cast to half precision (OpenAI CLIP's own inference mode).
"""


class BackboneError(RuntimeError):
    """A backbone could not be created (unknown name, bad configuration, ...)."""


class WeightsNotFoundError(BackboneError, FileNotFoundError):
    """Weights (or tokenizer files) for a named model are not available locally and could not
    be downloaded. The message says which model, where fewclip looked and how to point it at
    local weights."""


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
            raise ValueError(f"precision: expected one of {PRECISIONS}, found {precision!r}")
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
        self._channels_last = self.device.type == "cuda" and any(
            isinstance(m, nn.Conv2d) and m.kernel_size != m.stride for m in model.modules()
        )
        if self._channels_last:
            self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.model.eval()
        self.model.requires_grad_(False)

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
            raise ValueError(f"batch: expected a (B, 3, H, W) tensor, found {found}")
        x = batch.to(self.device, dtype=self._input_dtype, non_blocking=True)
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._compute_context():
            out = self._encode_images(x)
        return out.float()

    def encode_texts(self, texts: Sequence[str], *, batch_size: int = 256) -> Tensor:
        """Raw text features (T, D) float32 on :attr:`device` for T prompt strings."""
        if isinstance(texts, str):
            raise TypeError("texts: expected a sequence of strings, found a single str")
        texts = list(texts)
        if not texts:
            return torch.empty(0, self.embed_dim, device=self.device)
        outs = []
        with self._compute_context():
            for start in range(0, len(texts), batch_size):
                outs.append(self._encode_texts(texts[start : start + batch_size]).float())
        return torch.cat(outs)

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
