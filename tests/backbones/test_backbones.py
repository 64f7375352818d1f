"""Backbone loading: tiny models, local folders and files, OpenAI aliases, offline errors."""

from __future__ import annotations

import open_clip
import pytest
import torch

import fewclip.backbones as fb
from fewclip.backbones.names import OPENAI_ALIASES


@pytest.fixture(scope="module")
def tiny_vit() -> fb.Backbone:
    return fb.load("fewclip-tiny-vit")


@pytest.mark.parametrize("name", ["fewclip-tiny-vit", "fewclip-tiny-rn"])
def test_tiny_open_clip_models(name: str) -> None:
    state = torch.random.get_rng_state()
    a = fb.load(name)
    b = fb.load(name)
    assert torch.equal(state, torch.random.get_rng_state()), "load() changed the global RNG"
    assert a.id == b.id
    assert a.family == "open_clip"
    assert a.logit_scale == pytest.approx(100.0, rel=1e-5)
    assert a.logit_bias is None
    n_params = sum(p.numel() for p in a.model.parameters())
    assert n_params < 3_000_000
    x = torch.randn(3, 3, *a.image_size)
    feats = a.encode_images(x)
    assert feats.shape == (3, a.embed_dim)
    assert feats.dtype == torch.float32
    with torch.no_grad():
        direct = a.model.encode_image(x)
    torch.testing.assert_close(feats, direct)
    texts = a.encode_texts(["a photo of a cat.", "a dog"])
    with torch.no_grad():
        direct_t = a.model.encode_text(open_clip.SimpleTokenizer()(["a photo of a cat.", "a dog"]))
    torch.testing.assert_close(texts, direct_t)
    # features are raw: not unit norm
    assert not torch.allclose(feats.norm(dim=-1), torch.ones(3))


def test_tiny_models_differ() -> None:
    assert fb.load("fewclip-tiny-vit").id != fb.load("fewclip-tiny-rn").id


def test_transforms_of_tiny(tiny_vit: fb.Backbone) -> None:
    from PIL import Image

    img = Image.new("RGB", (50, 40), (200, 30, 30))
    x = tiny_vit.eval_transform(img)
    assert x.shape == (3, 32, 32)
    g = torch.Generator().manual_seed(0)
    assert tiny_vit.train_transform(img, g).shape == (3, 32, 32)


def test_save_and_load_local_dir(tmp_path, tiny_vit: fb.Backbone) -> None:
    folder = tiny_vit.save_pretrained(tmp_path / "tiny")
    assert (folder / "open_clip_config.json").is_file()
    assert (folder / "open_clip_model.safetensors").is_file()
    for name in (f"local-dir:{folder}", str(folder)):
        back = fb.load(name)
        assert back.id == tiny_vit.id
        x = torch.randn(2, 3, 32, 32)
        torch.testing.assert_close(back.encode_images(x), tiny_vit.encode_images(x))
        torch.testing.assert_close(back.encode_texts(["a b c"]), tiny_vit.encode_texts(["a b c"]))


def test_checkpoint_file_is_loaded(tmp_path) -> None:
    from safetensors.torch import save_file

    other = fb.load("fewclip-tiny-vit")
    with torch.no_grad():
        for p in other.model.parameters():
            p.add_(0.01)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in other.model.state_dict().items()}, str(path))
    loaded = fb.load("fewclip-tiny-vit", pretrained=path)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded.encode_images(x), other.encode_images(x))
    assert loaded.id != fb.load("fewclip-tiny-vit").id


def test_local_dir_without_weights_refuses(tmp_path, tiny_vit: fb.Backbone) -> None:
    folder = tiny_vit.save_pretrained(tmp_path / "tiny")
    (folder / "open_clip_model.safetensors").unlink()
    with pytest.raises(fb.WeightsNotFoundError, match="no weights file"):
        fb.load(f"local-dir:{folder}")


@pytest.mark.parametrize(("alias", "expected"), sorted(OPENAI_ALIASES.items()))
def test_openai_aliases_resolve_to_quickgelu(alias: str, expected: tuple[str, str]) -> None:
    arch, tag = expected
    assert arch.endswith("-quickgelu")
    assert tag == "openai"
    cfg = open_clip.get_model_config(arch)
    assert cfg is not None
    assert cfg["quick_gelu"] is True
    assert open_clip.get_pretrained_cfg(arch, tag), f"{arch} has no openai weights entry"


def test_offline_error_names_model_places_and_fix(tmp_path, connections) -> None:
    with pytest.raises(fb.WeightsNotFoundError) as err:
        fb.load("ViT-B/16", cache_dir=tmp_path / "hf-cache")
    assert connections == []  # offline (tests/conftest.py): no network wait, not even a probe
    msg = str(err.value)
    assert "ViT-B/16" in msg
    assert "ViT-B-16-quickgelu" in msg
    assert str(tmp_path / "hf-cache") in msg
    assert "timm/vit_base_patch16_clip_224.openai" in msg
    assert "local-dir:" in msg
    assert "--pretrained" in msg
    assert "HF_HOME" in msg


def test_plain_arch_with_openai_tag_uses_quickgelu(tmp_path) -> None:
    with pytest.raises(fb.WeightsNotFoundError, match="ViT-B-16-quickgelu"):
        fb.load("ViT-B-16", pretrained="openai", cache_dir=tmp_path)


def test_missing_pretrained_and_unknown_names() -> None:
    with pytest.raises(fb.BackboneError, match="laion2b"):
        fb.load("ViT-B-32")
    with pytest.raises(fb.UnknownBackboneError, match="not an OpenAI name, open_clip arch"):
        fb.load("no-such-model")
    with pytest.raises(KeyError, match="did you mean 'ViT-B/16'"):
        fb.load("ViT-B/17")
    with pytest.raises(fb.BackboneError, match="neither a known tag"):
        fb.load("ViT-B-32", pretrained="no-such-tag")
    with pytest.raises(ValueError, match="precision"):
        fb.load("fewclip-tiny-vit", precision="fp8")


def test_tiny_hf_clip(tmp_path) -> None:
    pytest.importorskip("transformers")
    from fewclip.backbones.tiny import write_tiny_hf

    bb = fb.load("fewclip-tiny-hf")
    assert bb.family == "hf"
    assert bb.embed_dim == 32
    assert bb.logit_scale == pytest.approx(100.0, rel=1e-5)
    x = torch.randn(2, 3, 32, 32)
    out = bb.model.get_image_features(pixel_values=x)
    direct = out if isinstance(out, torch.Tensor) else out.pooler_output
    torch.testing.assert_close(bb.encode_images(x), direct)
    # The HF tokenizer written from open_clip's BPE tokenises like open_clip.
    texts = ["a photo of a cat.", "Über-cool   dogs!"]
    hf_ids = bb.tokenizer(texts, padding="max_length", max_length=77, return_tensors="pt")
    oc_ids = open_clip.SimpleTokenizer()(texts)
    for row_hf, row_oc in zip(hf_ids["input_ids"], oc_ids, strict=True):
        n = int((row_oc != 0).sum())
        assert row_hf[:n].tolist() == row_oc[:n].tolist()
    folder = write_tiny_hf(tmp_path / "hf")
    for name in (f"hf:{folder}", str(folder)):
        back = fb.load(name)
        assert back.id == bb.id
        torch.testing.assert_close(back.encode_texts(texts), bb.encode_texts(texts))


def test_hf_missing_model_offline(tmp_path) -> None:
    pytest.importorskip("transformers")
    with pytest.raises(fb.WeightsNotFoundError) as err:
        fb.load("hf:openai/clip-vit-base-patch32", cache_dir=tmp_path)
    msg = str(err.value)
    assert "openai/clip-vit-base-patch32" in msg
    assert str(tmp_path) in msg
