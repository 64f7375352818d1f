"""Preprocessing and seeded augmentation."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from fewclip.backbones.transforms import Augment, AugmentTransform, Preprocess, view_generator


def _img() -> Image.Image:
    g = torch.Generator().manual_seed(0)
    arr = (torch.rand(60, 80, 3, generator=g) * 255).to(torch.uint8).numpy()
    return Image.fromarray(arr)


def test_view_generator_is_stable_and_distinct() -> None:
    a = torch.rand(4, generator=view_generator(1, 2, 3))
    b = torch.rand(4, generator=view_generator(1, 2, 3))
    assert torch.equal(a, b)
    for other in [(2, 2, 3), (1, 3, 3), (1, 2, 4)]:
        assert not torch.equal(a, torch.rand(4, generator=view_generator(*other)))


def test_augment_is_reproducible_and_varies() -> None:
    t = AugmentTransform(Preprocess(size=32))
    img = _img()
    x1 = t(img, view_generator(0, 0, 0))
    x2 = t(img, view_generator(0, 0, 0))
    x3 = t(img, view_generator(1, 0, 0))
    assert x1.shape == (3, 32, 32)
    assert torch.equal(x1, x2)
    assert not torch.equal(x1, x3)


def test_crop_params_respect_scale() -> None:
    t = AugmentTransform(Preprocess(size=32), Augment(scale=(0.5, 1.0)))
    for k in range(50):
        i, j, h, w = t.crop_params(80, 60, view_generator(k, 0, 0))
        assert i >= 0
        assert j >= 0
        assert i + h <= 60
        assert j + w <= 80
        assert h * w >= 0.5 * 80 * 60 * 0.95


def test_eval_transform_matches_open_clip() -> None:
    from open_clip.transform import PreprocessCfg, image_transform_v2

    pp = Preprocess(size=32)
    ref = image_transform_v2(PreprocessCfg(size=32), is_train=False)
    img = _img()
    assert torch.equal(pp.eval_transform()(img), ref(img))


def test_invalid_parameters_are_named() -> None:
    with pytest.raises(ValueError, match="interpolation"):
        Preprocess(size=32, interpolation="lanczos9")
    with pytest.raises(ValueError, match="resize_mode"):
        Preprocess(size=32, resize_mode="crop")
    with pytest.raises(ValueError, match="scale"):
        Augment(scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="hflip"):
        Augment(hflip=2.0)
