"""Image preprocessing: the model's evaluation transform and seeded training augmentation.

Both transforms take a decoded RGB PIL image (see :func:`fewclip.imageio.decode_image`) and
return a normalised (3, H, W) float tensor.

- :class:`Preprocess` describes a model's evaluation preprocessing (size, resize mode,
  interpolation, normalisation) and builds the transform with open_clip's own
  ``image_transform_v2``, so features match open_clip's for the same settings.
- :class:`Augment` is the Tip-Adapter / CLIP-Adapter training augmentation:
  ``RandomResizedCrop(size, scale=(0.5, 1), bicubic)`` + horizontal flip (p = 0.5) + the model's
  normalisation. :class:`AugmentTransform` draws its random parameters from an explicit
  ``torch.Generator``, so a view is reproducible from ``(seed, view index, image index)`` alone,
  whatever the batch size or number of workers.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from fewclip.errors import InvalidValueError

__all__ = [
    "OPENAI_MEAN",
    "OPENAI_STD",
    "Augment",
    "AugmentTransform",
    "Preprocess",
    "view_generator",
]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

#: Interpolation names accepted by ``Augment``/``Preprocess`` (torchvision's
#: ``InterpolationMode`` values; torchvision is imported only when a transform runs, so that
#: loading an adapter does not pay for it).
_INTERP = ("bicubic", "bilinear", "nearest")


def _pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


@dataclass(frozen=True)
class Preprocess:
    """A model's evaluation preprocessing.

    Attributes:
        size: output (height, width).
        mean, std: per-channel normalisation applied after scaling pixels to [0, 1].
        interpolation: ``"bicubic"``, ``"bilinear"`` or ``"nearest"``.
        resize_mode: ``"shortest"`` (resize the short side, centre crop; CLIP), ``"squash"``
            (resize both sides, no crop; SigLIP) or ``"longest"`` (resize the long side, pad).
        fill_color: padding value for ``"longest"``.
    """

    size: tuple[int, int]
    mean: tuple[float, ...] = OPENAI_MEAN
    std: tuple[float, ...] = OPENAI_STD
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    fill_color: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", _pair(self.size))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if self.interpolation not in _INTERP:
            raise InvalidValueError(
                f"interpolation: expected one of {sorted(_INTERP)}, found {self.interpolation!r}"
            )
        if self.resize_mode not in ("shortest", "squash", "longest"):
            raise InvalidValueError(
                "resize_mode: expected 'shortest', 'squash' or 'longest', "
                f"found {self.resize_mode!r}"
            )

    @classmethod
    def from_open_clip(cls, cfg: dict[str, Any]) -> Preprocess:
        """Build from an open_clip ``preprocess_cfg`` dict (``model.visual.preprocess_cfg``)."""
        return cls(
            size=_pair(cfg["size"]),
            mean=tuple(cfg.get("mean", OPENAI_MEAN)),
            std=tuple(cfg.get("std", OPENAI_STD)),
            interpolation=str(cfg.get("interpolation", "bicubic")),
            resize_mode=str(cfg.get("resize_mode", "shortest")),
            fill_color=int(cfg.get("fill_color", 0)),
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = list(self.size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    def eval_transform(self) -> Callable[[Image.Image], Tensor]:
        """The evaluation transform (resize, crop/pad, to tensor, normalise), via open_clip."""
        from open_clip.transform import PreprocessCfg, image_transform_v2

        cfg = PreprocessCfg(
            size=self.size,
            mean=self.mean,
            std=self.std,
            interpolation=self.interpolation,
            resize_mode=self.resize_mode,
            fill_color=self.fill_color,
        )
        transform: Callable[[Image.Image], Tensor] = image_transform_v2(cfg, is_train=False)
        return transform


@dataclass(frozen=True)
class Augment:
    """Training augmentation parameters (defaults: the Tip-Adapter / CLIP-Adapter reference).

    Attributes:
        scale: RandomResizedCrop area range, as a fraction of the image.
        ratio: RandomResizedCrop aspect-ratio range.
        hflip: probability of a horizontal flip.
        interpolation: interpolation of the crop resize.
    """

    scale: tuple[float, float] = (0.5, 1.0)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    hflip: float = 0.5
    interpolation: str = "bicubic"
    name: str = field(default="random_resized_crop+hflip")

    def __post_init__(self) -> None:
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise InvalidValueError(f"scale: expected 0 < low <= high <= 1, found {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise InvalidValueError(f"ratio: expected 0 < low <= high, found {self.ratio}")
        if not 0 <= self.hflip <= 1:
            raise InvalidValueError(f"hflip: expected a probability in [0, 1], found {self.hflip}")
        if self.interpolation not in _INTERP:
            raise InvalidValueError(
                f"interpolation: expected one of {sorted(_INTERP)}, found {self.interpolation!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "scale": [float(s) for s in self.scale],
            "ratio": [float(r) for r in self.ratio],
            "hflip": float(self.hflip),
            "interpolation": self.interpolation,
        }


def view_generator(seed: int, view: int, index: int) -> torch.Generator:
    """A CPU generator seeded from ``(seed, view, index)`` by a stable hash.

    The same triple always gives the same stream, on every platform and in every process.
    """
    digest = hashlib.sha256(f"fewclip-view:{int(seed)}:{int(view)}:{int(index)}".encode()).digest()
    g = torch.Generator()
    g.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return g


class AugmentTransform:
    """Seeded RandomResizedCrop + horizontal flip + normalisation.

    ``transform(img, generator)`` draws the crop and flip from ``generator`` (the same
    algorithm as torchvision's ``RandomResizedCrop.get_params``, 10 tries then a centre crop),
    so the output depends only on the image and the generator state. Without a generator the
    global torch RNG is used, like torchvision.
    """

    def __init__(self, preprocess: Preprocess, augment: Augment | None = None) -> None:
        self.preprocess = preprocess
        self.augment = augment if augment is not None else Augment()
        if self.augment.interpolation not in _INTERP:
            raise InvalidValueError(f"interpolation: expected one of {_INTERP}")

    def crop_params(
        self, width: int, height: int, generator: torch.Generator | None = None
    ) -> tuple[int, int, int, int]:
        """Crop box ``(top, left, height, width)`` for an image of ``width`` x ``height``."""
        area = height * width
        lo, hi = self.augment.scale
        log_ratio = (math.log(self.augment.ratio[0]), math.log(self.augment.ratio[1]))
        for _ in range(10):
            u = torch.rand(2, generator=generator)
            target_area = area * (lo + (hi - lo) * float(u[0]))
            aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * float(u[1]))
            w = round(math.sqrt(target_area * aspect))
            h = round(math.sqrt(target_area / aspect))
            if 0 < w <= width and 0 < h <= height:
                i = int(torch.randint(0, height - h + 1, (1,), generator=generator))
                j = int(torch.randint(0, width - w + 1, (1,), generator=generator))
                return i, j, h, w
        # Fallback to a central crop within the ratio range.
        in_ratio = width / height
        if in_ratio < self.augment.ratio[0]:
            w = width
            h = round(w / self.augment.ratio[0])
        elif in_ratio > self.augment.ratio[1]:
            h = height
            w = round(h * self.augment.ratio[1])
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> Tensor:
        import torchvision.transforms.functional as TF
        from torchvision.transforms import InterpolationMode

        i, j, h, w = self.crop_params(img.width, img.height, generator)
        interp = InterpolationMode(self.augment.interpolation)
        out = TF.resized_crop(
            img, i, j, h, w, list(self.preprocess.size), interpolation=interp, antialias=True
        )
        if float(torch.rand(1, generator=generator)) < self.augment.hflip:
            out = TF.hflip(out)
        t = TF.to_tensor(out)
        return TF.normalize(t, list(self.preprocess.mean), list(self.preprocess.std))

    def __repr__(self) -> str:
        return f"AugmentTransform(size={self.preprocess.size}, augment={self.augment})"
