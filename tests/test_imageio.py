"""Images in the wild: formats, modes, EXIF, very large files and a corpus of bad files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fewclip.imageio import (
    BadImage,
    BadImageError,
    ImageDecodeError,
    decode_image,
    find_bad_images,
)

RED = (220, 40, 30)


def _solid(mode: str = "RGB", size: tuple[int, int] = (40, 30), color: object = RED) -> Image.Image:
    return Image.new(mode, size, color)  # type: ignore[arg-type]


def _close(img: Image.Image, xy: tuple[int, int], rgb: tuple[int, int, int], tol: int = 6) -> None:
    got = img.getpixel(xy)
    assert isinstance(got, tuple)
    assert max(abs(int(a) - b) for a, b in zip(got, rgb, strict=True)) <= tol, (got, rgb)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF"])
def test_formats_decode_to_rgb(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"img.{fmt.lower()}"
    _solid().save(path, fmt)
    img = decode_image(path)
    assert img.mode == "RGB"
    assert img.size == (40, 30)
    _close(img, (20, 15), RED)


def test_modes(tmp_path: Path) -> None:
    # grayscale
    _solid("L", color=100).save(tmp_path / "l.png")
    _close(decode_image(tmp_path / "l.png"), (1, 1), (100, 100, 100), 0)
    # RGBA: transparent left half goes to the white background, opaque right half keeps colour
    rgba = _solid("RGBA", color=(*RED, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 20, 30))
    rgba.save(tmp_path / "rgba.png")
    img = decode_image(tmp_path / "rgba.png")
    _close(img, (5, 5), (255, 255, 255), 0)
    _close(img, (30, 5), RED, 0)
    # palette with a transparent index
    pal = Image.new("P", (10, 10), 1)
    pal.putpalette([0, 0, 0, *RED] + [0] * 762)
    pal.paste(0, (0, 0, 5, 10))
    pal.save(tmp_path / "p.png", transparency=0)
    img = decode_image(tmp_path / "p.png")
    _close(img, (1, 1), (255, 255, 255), 0)
    _close(img, (8, 1), RED, 0)
    # CMYK JPEG
    _solid("RGB").convert("CMYK").save(tmp_path / "cmyk.jpg")
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    _close(decode_image(tmp_path / "cmyk.jpg"), (20, 15), RED, 12)
    # 1-bit
    _solid("1", color=1).save(tmp_path / "bw.png")
    _close(decode_image(tmp_path / "bw.png"), (1, 1), (255, 255, 255), 0)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_is_rescaled_not_clipped(tmp_path: Path, fmt: str) -> None:
    arr = np.full((8, 8), 32768, dtype=np.uint16)
    arr[:, 4:] = 65535
    path = tmp_path / f"deep.{fmt.lower()}"
    Image.fromarray(arr).save(path, fmt)
    assert Image.open(path).mode.startswith("I")
    img = decode_image(path)
    _close(img, (1, 1), (128, 128, 128), 1)
    _close(img, (6, 1), (255, 255, 255), 0)


def test_float_and_int32_modes() -> None:
    f = Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32), mode="F")
    _close(decode_image(f), (0, 0), (128, 128, 128), 1)
    i = Image.fromarray(np.full((4, 4), 1000, dtype=np.int32), mode="I")
    _close(decode_image(i), (0, 0), (4, 4, 4), 1)


def test_exif_rotation(tmp_path: Path) -> None:
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste(RED, (0, 0, 10, 20))  # red stripe on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    img.save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    out = decode_image(tmp_path / "rot.jpg")
    assert out.size == (20, 40)
    _close(out, (10, 3), RED, 20)  # the left stripe is now at the top
    _close(out, (10, 36), (0, 0, 255), 20)


def test_very_large_image(tmp_path: Path) -> None:
    big = Image.new("RGB", (6000, 4500), (10, 200, 10))
    big.save(tmp_path / "big.jpg", quality=80)
    out = decode_image(tmp_path / "big.jpg")
    assert out.size == (6000, 4500)
    _close(out, (5999, 4499), (10, 200, 10), 6)


def test_image_over_pils_warning_limit_decodes_without_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between MAX_IMAGE_PIXELS and twice that PIL only warns: the image decodes and nothing
    leaks to the user; above twice the limit it is a bad image with its reason."""
    import warnings

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100)
    Image.new("RGB", (150, 100)).save(tmp_path / "large.png")
    Image.new("RGB", (250, 100)).save(tmp_path / "bomb.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert decode_image(tmp_path / "large.png").size == (150, 100)
    with pytest.raises(ImageDecodeError, match="image too large to decode safely"):
        decode_image(tmp_path / "bomb.png")


def test_symbolic_link_loop_and_broken_link_have_their_own_reasons(tmp_path: Path) -> None:
    (tmp_path / "loop.png").symlink_to("loop.png")
    (tmp_path / "a.png").symlink_to("b.png")
    (tmp_path / "b.png").symlink_to("a.png")
    (tmp_path / "gone.png").symlink_to("missing.png")
    for name in ("loop.png", "a.png"):
        with pytest.raises(ImageDecodeError, match="symbolic link loop"):
            decode_image(tmp_path / name)
    with pytest.raises(ImageDecodeError, match=r"broken symbolic link \(its target 'missing.png'"):
        decode_image(tmp_path / "gone.png")
    with pytest.raises(ImageDecodeError, match="file not found"):
        decode_image(tmp_path / "never.png")


def test_bad_image_error_speaks_python_and_the_cli_its_own_option() -> None:
    e = BadImageError([BadImage("x.png", "truncated file")], total=3)
    assert "skip_bad=True" in str(e)
    assert "--skip-bad" not in str(e)
    assert "--skip-bad" in e.for_cli()
    assert "skip_bad=True" not in e.for_cli()
    assert "x.png: truncated file" in e.for_cli()


def test_bytes_and_pil_sources() -> None:
    buf = io.BytesIO()
    _solid().save(buf, "PNG")
    _close(decode_image(buf.getvalue()), (0, 0), RED, 0)
    _close(decode_image(_solid("L", color=7)), (0, 0), (7, 7, 7), 0)


def make_bad_corpus(folder: Path) -> dict[str, str]:
    """Bad files of every kind; returns {path: expected reason fragment}."""
    folder.mkdir(parents=True, exist_ok=True)
    good = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
        good, "JPEG"
    )
    png = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), np.uint8)).save(
        png, "PNG"
    )
    files = {
        "empty.jpg": (b"", "empty file"),
        "truncated.jpg": (good.getvalue()[: len(good.getvalue()) // 2], "truncated"),
        "truncated.png": (png.getvalue()[: len(png.getvalue()) // 2], "truncated"),
        "garbage.jpg": (b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4, ""),
        "notes.png": (b"this is a text file, not an image\n", "not an image"),
    }
    out = {}
    for name, (data, reason) in files.items():
        (folder / name).write_bytes(data)
        out[str(folder / name)] = reason
    out[str(folder / "missing.jpg")] = "not found"
    return out


def test_bad_corpus_is_reported_completely(tmp_path: Path) -> None:
    bad = make_bad_corpus(tmp_path / "bad")
    good = tmp_path / "good.png"
    _solid().save(good)
    found = find_bad_images([good, *bad])
    assert [b.path for b in found] == list(bad)
    for b in found:
        assert bad[b.path] in b.reason
        with pytest.raises(ImageDecodeError) as err:
            decode_image(b.path)
        assert err.value.path == b.path
        assert err.value.reason == b.reason
    error = BadImageError(found, total=len(bad) + 1)
    for path in bad:
        assert path in str(error)
    assert f"{len(bad)} of {len(bad) + 1}" in str(error)
    assert "skip_bad=True" in str(error)


def test_bad_image_error_truncates_long_lists() -> None:
    err = BadImageError([BadImage(f"/x/{i}.jpg", "empty file") for i in range(50)])
    assert "and 30 more" in str(err)
    assert len(err.bad_files) == 50
