"""Robust image decoding with bad-file reporting.

Every image fewclip encodes goes through :func:`decode_image`, which turns whatever PIL can open
into an 8-bit RGB image the way a person looking at the file would see it:

- EXIF orientation is applied (a photo taken on its side comes out upright);
- grayscale, palette, CMYK, YCbCr, LAB and 1-bit images are converted to RGB;
- 16-bit and 32-bit images (``I;16``, ``I``, ``F``) are rescaled to 8 bits instead of being
  clipped to white;
- transparency (RGBA, LA, palette with a transparent colour) is composited over a background
  colour (white by default) instead of revealing whatever RGB values hide under alpha = 0;
- multi-frame files (GIF, TIFF) give their first frame.

Files that cannot be decoded raise :class:`ImageDecodeError` naming the file and the reason.
Code that decodes many files collects them as :class:`BadImage` records and raises one
:class:`BadImageError` listing every bad file (see :func:`find_bad_images`), so nothing is
dropped silently. No global PIL setting is changed (``LOAD_TRUNCATED_IMAGES`` stays off and the
decompression-bomb limit stays PIL's).
"""

from __future__ import annotations

import errno
import io
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fewclip.errors import FewclipError

__all__ = [
    "BadImage",
    "BadImageError",
    "ImageDecodeError",
    "ImageSource",
    "decode_image",
    "describe_source",
    "find_bad_images",
]

ImageSource = str | os.PathLike | bytes | Image.Image  # type: ignore[type-arg]
"""What :func:`decode_image` accepts: a path, the encoded bytes of a file, or a PIL image."""

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_SHOWN = 20


@dataclass(frozen=True)
class BadImage:
    """A file that could not be decoded: its path (or a description) and the reason."""

    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class ImageDecodeError(FewclipError, ValueError):
    """One image could not be decoded. ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class BadImageError(FewclipError, ValueError):
    """Some images could not be decoded; ``bad_files`` lists every one (path and reason)."""

    def __init__(self, bad_files: Sequence[BadImage], total: int | None = None) -> None:
        self.bad_files = list(bad_files)
        n = len(self.bad_files)
        of = f" of {total}" if total is not None else ""
        lines = [f"  {b.path}: {b.reason}" for b in self.bad_files[:_SHOWN]]
        self._head = f"{n}{of} images could not be decoded:\n" + "\n".join(lines)
        more = f"\n  ... and {n - _SHOWN} more" if n > _SHOWN else ""
        super().__init__(
            self._head
            + (more + " (see the .bad_files attribute)" if more else "")
            + "\nFix or remove these files, or skip them with skip_bad=True (every skipped "
            "file is listed in the result and in the records)."
        )
        self._cli = (
            self._head
            + more
            + "\nFix or remove these files, or skip them with --skip-bad (every skipped file "
            "is listed in the output and in the records)."
        )

    def for_cli(self) -> str:
        """The message with the command-line option instead of the Python argument."""
        return self._cli


def describe_source(source: object) -> str:
    """A short printable name for an image source (the path, or a placeholder)."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)  # type: ignore[arg-type]
    if isinstance(source, (bytes, bytearray)):
        return f"<{len(source)} bytes>"
    if isinstance(source, Image.Image):
        return f"<PIL image {source.mode} {source.size[0]}x{source.size[1]}>"
    return f"<{type(source).__name__}>"


def _to_8bit(img: Image.Image) -> Image.Image:
    """Rescale a high-bit-depth single-channel image (``I;16*``, ``I``, ``F``) to mode ``L``."""
    arr = np.asarray(img)
    if img.mode.startswith("I;16"):
        out = arr.astype(np.float32) / 257.0
    elif img.mode == "I":
        arr = arr.astype(np.float64)
        peak = float(arr.max()) if arr.size else 0.0
        # 16-bit data stored as 32-bit ints (old PNG/TIFF readers); 8-bit data passes through.
        out = arr / 257.0 if peak > 255 else arr
    else:  # "F"
        arr = np.nan_to_num(arr.astype(np.float64))
        peak = float(arr.max()) if arr.size else 0.0
        out = arr * 255.0 if peak <= 1.0 else arr
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), mode="L")


def _to_rgb(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":
        return _to_8bit(img).convert("RGB")
    has_alpha = img.mode in _ALPHA_MODES or (
        img.mode in ("P", "L", "RGB") and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return img.convert("RGB")


def decode_image(
    source: ImageSource,
    *,
    background: tuple[int, int, int] = (255, 255, 255),
    max_pixels: int | None = None,
) -> Image.Image:
    """Decode ``source`` into an upright 8-bit RGB PIL image (fully loaded, file closed).

    Args:
        source: a path, the bytes of an encoded image, or a PIL image (converted the same way).
        background: RGB colour that transparent pixels are composited over.
        max_pixels: refuse an image with more pixels (width × height, read from its header
            before any pixel is decoded); ``None``: only PIL's own decompression-bomb limit.

    Raises:
        ImageDecodeError: the file is missing, empty, not an image, truncated, corrupt or larger
            than PIL's decompression-bomb limit; ``.path`` and ``.reason`` say which and why.
    """
    name = describe_source(source)
    try:
        if isinstance(source, Image.Image):
            img = source
            img.load()
            return _to_rgb(ImageOps.exif_transpose(img) or img, background)
        if isinstance(source, (bytes, bytearray)):
            if not source:
                raise ImageDecodeError(name, "empty file (0 bytes)")
            fp: io.BytesIO | Path = io.BytesIO(bytes(source))
        else:
            path = Path(os.fspath(source))
            if not path.exists():
                raise ImageDecodeError(name, _missing_reason(path))
            if not path.is_file():
                raise ImageDecodeError(name, "not a regular file")
            if path.stat().st_size == 0:
                raise ImageDecodeError(name, "empty file (0 bytes)")
            fp = path
        with warnings.catch_warnings():
            # between MAX_IMAGE_PIXELS and twice that, PIL only warns (a large photo is fine);
            # above it, DecompressionBombError is reported as this image's reason below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(fp)
        with opened:
            w, h = opened.size
            if max_pixels is not None and w * h > max_pixels:
                raise ImageDecodeError(
                    name,
                    f"image too large: {w}×{h} = {w * h:,} pixels, more than the limit of "
                    f"{max_pixels:,} (a guard against decompression bombs)",
                )
            opened.load()
            upright = ImageOps.exif_transpose(opened)
            out = _to_rgb(upright if upright is not None else opened, background)
            out.load()
            # Detach from the file: convert() may return the very same object for RGB input.
            return out.copy() if out is opened else out
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError(name, "not an image file PIL can read (unknown format)") from None
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(
            name,
            f"image too large to decode safely ({e}); raise PIL.Image.MAX_IMAGE_PIXELS "
            "yourself if you trust this file",
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        msg = str(e) or type(e).__name__
        if "truncated" in msg.lower():
            reason = f"truncated file ({msg})"
        else:
            reason = f"corrupt or unreadable image data ({type(e).__name__}: {msg})"
        raise ImageDecodeError(name, reason) from None
    except Exception as e:  # any other decoder failure is reported, not swallowed
        raise ImageDecodeError(name, f"{type(e).__name__}: {e}") from None


def _missing_reason(path: Path) -> str:
    """Why ``path`` (which does not exist as far as ``exists()`` can tell) cannot be read."""
    if not path.is_symlink():
        return "file not found"
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symbolic link loop (the link leads back to itself)"
    return f"broken symbolic link (its target {os.readlink(path)!r} does not exist)"


def find_bad_images(sources: Iterable[ImageSource]) -> list[BadImage]:
    """Decode every source and return the ones that fail (in input order), with reasons.

    This decodes each image fully (the only way to catch truncated data), so it costs as much
    as reading the dataset once. Extraction does the same check on the fly; use this to audit a
    folder before extracting.
    """
    bad = []
    for source in sources:
        try:
            decode_image(source)
        except ImageDecodeError as e:
            bad.append(BadImage(e.path, e.reason))
    return bad
