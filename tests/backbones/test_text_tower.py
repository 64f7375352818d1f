"""The text tower below the tokenizer: open_clip's own encode_text, and trimming to the prompt's
length changes nothing the EOT token sees."""

from __future__ import annotations

import pytest
import torch

import fewclip.backbones as fb
from fewclip.backbones.base import BackboneError
from fewclip.text_tower import TextTower, causal_mask

TEXTS = ["a photo of a red circle.", "x", "a much longer prompt " * 4, ""]


@pytest.fixture(scope="module")
def backbone() -> fb.Backbone:
    return fb.load("fewclip-tiny-vit")


def test_causal_mask_is_zero_on_and_below_the_diagonal():
    m = causal_mask(3)
    inf = float("-inf")
    assert m.tolist() == [[0.0, inf, inf], [0.0, 0.0, inf], [0.0, 0.0, 0.0]]


def test_the_full_forward_is_open_clip_encode_text(backbone):
    tower = backbone.text_tower()
    assert isinstance(tower, TextTower)
    assert (tower.width, tower.context_length, tower.embed_dim) == (32, 77, backbone.embed_dim)
    assert tower.logit_scale == pytest.approx(backbone.logit_scale)
    tokens = tower.tokenize(TEXTS)
    want = backbone.model.encode_text(tokens)
    got = tower.encode(tower.embed(tokens), tower.eot_index(tokens), trim=False)
    assert torch.equal(got, want)
    assert torch.equal(tower.eot_index(tokens), tokens.argmax(-1))


def test_trimmed_features_equal_the_full_length_ones(backbone):
    tower = backbone.text_tower()
    tokens = tower.tokenize(TEXTS)
    eot = tower.eot_index(tokens)
    emb = tower.embed(tokens)
    emb[:, 1:5] = torch.randn(len(TEXTS), 4, tower.width)  # learned vectors spliced in
    full = tower.encode(emb, eot, trim=False)
    trimmed = tower.encode(emb, eot)
    torch.testing.assert_close(trimmed, full, rtol=1e-5, atol=1e-5)
    # what comes after the EOT token cannot matter
    emb[:, int(eot.max()) + 1 :] = torch.randn_like(emb[:, int(eot.max()) + 1 :])
    torch.testing.assert_close(tower.encode(emb, eot, trim=False), full, rtol=1e-5, atol=1e-5)


def test_gradients_reach_spliced_vectors_and_not_the_frozen_model(backbone):
    tower = backbone.text_tower()
    tokens = tower.tokenize(["X X a cat."])
    ctx = torch.zeros(2, tower.width, requires_grad=True)
    emb = tower.embed(tokens)
    emb = torch.cat([emb[:, :1], ctx.unsqueeze(0), emb[:, 3:]], dim=1)
    tower.encode(emb, tower.eot_index(tokens)).sum().backward()
    assert ctx.grad is not None
    assert bool(ctx.grad.abs().sum() > 0)
    assert all(p.grad is None for p in backbone.model.parameters())


def test_wrong_shapes_are_named():
    bb = fb.load("fewclip-tiny-vit")
    tower = bb.text_tower()
    with pytest.raises(ValueError, match=r"embeddings: expected \(N, L, 32\)"):
        tower.encode(torch.zeros(2, 5, 8), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"eot: expected shape \(2,\)"):
        tower.encode(torch.zeros(2, 5, 32), torch.zeros(3, dtype=torch.long))


def test_a_backbone_without_a_tower_says_so():
    class NoTower(fb.Backbone):
        family = "none"
        embed_dim = 4
        logit_scale = 100.0

        def _encode_images(self, x):  # pragma: no cover - never called
            raise AssertionError

        def _encode_texts(self, texts):  # pragma: no cover - never called
            raise AssertionError

    bb = fb.load("fewclip-tiny-vit")
    odd = NoTower(
        name="odd", model=torch.nn.Linear(1, 1), preprocess=bb.preprocess, arch={},
        arch_name="odd", weights="0",
    )  # fmt: skip
    with pytest.raises(BackboneError, match="odd: this none backbone does not open its text"):
        odd.text_tower()
