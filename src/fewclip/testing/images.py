"""A small generated image dataset for demos and tests: coloured shapes and textures.

``make_shapes_dataset(root)`` writes ``root/{train,test}/<class>/*.png`` (the layout
``fewclip.data.load_folder`` reads) with prompt-friendly class names such as ``red_circle`` and
``blue_stripes``. Every image is drawn from a seeded generator, so the same call writes the same
files. The classes differ in colour *and* shape/texture, with random position, size, rotation,
background tint and noise, so that a model has something to learn from a few shots.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from fewclip._io import atomic_write
from fewclip.errors import InvalidValueError

__all__ = [
    "BAD_IMAGE_KINDS",
    "SHAPE_CLASSES",
    "draw_shape_image",
    "make_shapes_dataset",
    "write_bad_images",
]

_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "blue": (40, 80, 220),
    "green": (40, 170, 60),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
    "black": (25, 25, 25),
    "pink": (240, 120, 180),
    "cyan": (40, 200, 210),
    "brown": (130, 80, 40),
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
}

#: The default 10 classes: (colour, shape) pairs, named ``<colour>_<shape>``.
SHAPE_CLASSES: tuple[str, ...] = (
    "red_circle",
    "blue_square",
    "green_triangle",
    "yellow_star",
    "purple_stripes",
    "orange_dots",
    "black_cross",
    "pink_checkerboard",
    "cyan_diamond",
    "brown_ring",
)


def _polygon(cx: float, cy: float, r: float, n: int, rot: float) -> list[tuple[float, float]]:
    return [
        (cx + r * math.cos(rot + 2 * math.pi * k / n), cy + r * math.sin(rot + 2 * math.pi * k / n))
        for k in range(n)
    ]


def _star(cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    pts = []
    for k in range(10):
        rr = r if k % 2 == 0 else r * 0.45
        a = rot + math.pi * k / 5
        pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    return pts


Shape = Callable[[ImageDraw.ImageDraw, np.random.Generator, int, tuple[int, int, int]], None]


def _shape_fn(shape: str) -> Shape:
    def place(rng: np.random.Generator, size: int) -> tuple[float, float, float, float]:
        r = size * rng.uniform(0.22, 0.38)
        cx = rng.uniform(r, size - r)
        cy = rng.uniform(r, size - r)
        return cx, cy, r, rng.uniform(0, 2 * math.pi)

    def circle(d: ImageDraw.ImageDraw, rng: np.random.Generator, s: int, c: tuple) -> None:
        cx, cy, r, _ = place(rng, s)
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=c)

    def square(d: ImageDraw.ImageDraw, rng: np.random.Generator, s: int, c: tuple) -> None:
        cx, cy, r, rot = place(rng, s)
        d.polygon(_polygon(cx, cy, r, 4, rot), fill=c)

    def triangle(d: ImageDraw.ImageDraw, rng: np.random.Generator, s: int, c: tuple) -> None:
        cx, cy, r, rot = place(rng, s)
        d.polygon(_polygon(cx, cy, r, 3, rot), fill=c)

    def star(d: ImageDraw.ImageDraw, rng: np.random.Generator, s: int, c: tuple) -> None:
        cx, cy, r, rot = place(rng, s)
        d.polygon(_star(cx, cy, r, rot), fill=c)

    def diamond(d: ImageDraw.ImageDraw, rng: np.random.Generator, s: int, c: tuple) -> None:
        cx, cy, r, _ = place(rng, s)
        d.polygon([(cx, cy - r), (cx + 0.6 * r, cy), (cx, cy + r), (cx - 0.6 * r, cy)], fill=c)

    def ring(d: ImageDraw.ImageDraw, rng: np.random.Generator, s: int, c: tuple) -> None:
        cx, cy, r, _ = place(rng, s)
        d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=c, width=max(2, int(r / 3)))

    def cross(d: ImageDraw.ImageDraw, rng: np.random.Generator, s: int, c: tuple) -> None:
        cx, cy, r, _ = place(rng, s)
        w = max(2, int(r / 2.5))
        d.line([(cx - r, cy - r), (cx + r, cy + r)], fill=c, width=w)
        d.line([(cx - r, cy + r), (cx + r, cy - r)], fill=c, width=w)

    def stripes(d: ImageDraw.ImageDraw, rng: np.random.Generator, s: int, c: tuple) -> None:
        period = int(rng.integers(6, 12))
        offset = int(rng.integers(0, period))
        w = max(2, period // 2)
        if rng.random() < 0.5:
            for x in range(-period + offset, s, period):
                d.rectangle([x, 0, x + w - 1, s], fill=c)
        else:
            for y in range(-period + offset, s, period):
                d.rectangle([0, y, s, y + w - 1], fill=c)

    def dots(d: ImageDraw.ImageDraw, rng: np.random.Generator, s: int, c: tuple) -> None:
        for _ in range(int(rng.integers(8, 16))):
            r = s * rng.uniform(0.04, 0.08)
            cx, cy = rng.uniform(0, s, size=2)
            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=c)

    def checkerboard(d: ImageDraw.ImageDraw, rng: np.random.Generator, s: int, c: tuple) -> None:
        cell = int(rng.integers(6, 12))
        ox, oy = (int(v) for v in rng.integers(0, cell, size=2))
        for i, x in enumerate(range(-ox, s, cell)):
            for j, y in enumerate(range(-oy, s, cell)):
                if (i + j) % 2 == 0:
                    d.rectangle([x, y, x + cell - 1, y + cell - 1], fill=c)

    shapes: dict[str, Shape] = {
        "circle": circle,
        "square": square,
        "triangle": triangle,
        "star": star,
        "diamond": diamond,
        "ring": ring,
        "cross": cross,
        "stripes": stripes,
        "dots": dots,
        "checkerboard": checkerboard,
    }
    if shape not in shapes:
        raise InvalidValueError(f"shape: expected one of {sorted(shapes)}, found {shape!r}")
    return shapes[shape]


def draw_shape_image(classname: str, rng: np.random.Generator, size: int = 64) -> Image.Image:
    """One RGB image of ``classname`` (``<colour>_<shape>``), drawn with ``rng``."""
    colour, _, shape = classname.partition("_")
    if colour not in _COLOURS or not shape:
        raise InvalidValueError(
            f"classname: expected '<colour>_<shape>' with a colour in {sorted(_COLOURS)}, "
            f"found {classname!r}"
        )
    fn = _shape_fn(shape)
    base = np.array([235, 235, 225]) + rng.integers(-25, 15, size=3)
    img = Image.new("RGB", (size, size), tuple(int(v) for v in np.clip(base, 0, 255)))
    c = np.array(_COLOURS[colour]) + rng.integers(-20, 21, size=3)
    r, g, b = (int(v) for v in np.clip(c, 0, 255))
    fn(ImageDraw.Draw(img), rng, size, (r, g, b))
    arr = np.asarray(img).astype(np.int16) + rng.integers(-10, 11, size=(size, size, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def make_shapes_dataset(
    root: str | os.PathLike[str],
    *,
    classes: Sequence[str] = SHAPE_CLASSES,
    per_class: dict[str, int] | None = None,
    size: int = 64,
    seed: int = 0,
) -> Path:
    """Write a shapes dataset under ``root`` and return ``root``.

    Args:
        root: output folder; ``root/<split>/<class>/<i>.png`` is written for each split.
        classes: class names ``<colour>_<shape>`` (default: :data:`SHAPE_CLASSES`).
        per_class: images per class and split (default ``{"train": 24, "test": 20}``; add
            ``"val"`` for a val split).
        size: image side in pixels.
        seed: the generator seed; the same arguments always write the same images.

    Files are written atomically, and an existing complete dataset with a marker file for the
    same arguments is reused as it is.
    """
    counts = dict(per_class) if per_class is not None else {"train": 24, "test": 20}
    if not classes:
        raise InvalidValueError("classes: expected at least one class name")
    bad = [s for s in counts if s not in ("train", "val", "test")]
    if bad or any(n < 1 for n in counts.values()):
        raise InvalidValueError(
            f"per_class: expected train/val/test → positive counts, found {counts}"
        )
    out = Path(root)
    marker = out / ".fewclip-shapes"
    signature = repr((tuple(classes), sorted(counts.items()), size, seed))
    if marker.is_file() and marker.read_text() == signature:
        return out
    for s_idx, (split, n) in enumerate(sorted(counts.items())):
        for c_idx, name in enumerate(classes):
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng([seed, s_idx, c_idx])
            for i in range(n):
                buf = io.BytesIO()
                draw_shape_image(name, rng, size).save(buf, format="PNG")
                atomic_write(folder / f"{i:03d}.png", buf.getvalue())
    marker.write_text(signature)
    return out


#: What :func:`write_bad_images` writes: file name → how it is broken.
BAD_IMAGE_KINDS = {
    "broken.jpg": "random bytes with a JPEG name",
    "truncated.png": "the first half of a valid PNG",
    "empty.jpg": "a file of 0 bytes",
}


def write_bad_images(
    folder: str | os.PathLike[str], kinds: Sequence[str] = tuple(BAD_IMAGE_KINDS)
) -> list[Path]:
    """Write undecodable image files into ``folder`` (see :data:`BAD_IMAGE_KINDS`) and return
    their paths: the faults a real photo folder has (a failed copy, a cut download, an empty
    placeholder), for tests and for trying ``--skip-bad``."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind in kinds:
        if kind not in BAD_IMAGE_KINDS:
            raise InvalidValueError(
                f"kinds: expected some of {sorted(BAD_IMAGE_KINDS)}, found {kind!r}"
            )
        path = out / kind
        if kind == "broken.jpg":
            data = np.random.default_rng(0).bytes(512)
        elif kind == "truncated.png":
            buf = io.BytesIO()
            draw_shape_image("red_circle", np.random.default_rng(0), 32).save(buf, format="PNG")
            data = buf.getvalue()[: len(buf.getvalue()) // 2]
        else:
            data = b""
        path.write_bytes(data)
        paths.append(path)
    return paths
