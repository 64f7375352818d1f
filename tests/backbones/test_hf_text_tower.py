"""The Hugging Face CLIP text tower: transformers' own get_text_features on the same tokens,
trimming, both attention implementations, the pre-#24773 EOT rule, and CoOp through it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import fewclip.backbones as fb
from fewclip.backbones.base import BackboneError
from fewclip.functional import l2_normalize
from fewclip.methods.coop import CoOp
from fewclip.task import FeatureSet, Task
from fewclip.text_tower import TextTower

transformers = pytest.importorskip("transformers")

from fewclip.backbones.hf import HFTextTower  # noqa: E402
from fewclip.backbones.tiny import write_tiny_hf  # noqa: E402

TEXTS = ["a photo of a red circle.", "x", "a much longer prompt " * 4, ""]
CLASSES = ["red circle", "blue_square", "green triangle"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_hf(tmp_path_factory.mktemp("tiny-hf") / "model")


@pytest.fixture(scope="module")
def backbone(folder: Path) -> fb.Backbone:
    return fb.load(f"hf:{folder}")


def _get_text_features(model, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model.get_text_features(input_ids=tokens)
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _tower_of(folder: Path, **kwargs) -> tuple[object, HFTextTower]:
    """A fresh CLIPModel from ``folder`` (``from_pretrained`` ``kwargs``) and its tower."""
    model = transformers.CLIPModel.from_pretrained(folder, **kwargs).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    return model, HFTextTower(model, tokenizer, 77, 100.0)


def test_encode_is_transformers_get_text_features(backbone):
    tower = backbone.text_tower()
    assert isinstance(tower, HFTextTower)
    assert isinstance(tower, TextTower)
    assert (tower.width, tower.context_length, tower.embed_dim) == (32, 77, backbone.embed_dim)
    assert tower.logit_scale == pytest.approx(backbone.logit_scale)
    tokens = tower.tokenize(TEXTS)
    assert tokens.shape == (len(TEXTS), 77)
    want = _get_text_features(backbone.model, tokens)
    with torch.no_grad():
        full = tower.encode(tower.embed(tokens), tower.eot_index(tokens), trim=False)
        trimmed = tower.encode(tower.embed(tokens), tower.eot_index(tokens))
    torch.testing.assert_close(full, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(trimmed, want, rtol=1e-5, atol=1e-6)
    # the EOT is the first end-of-text id (the pad id is the same id here)
    assert tower.eot_index(tokens).tolist() == [8, 2, 17, 1]
    # and the backbone's own text features (padded to the longest, with an attention mask)
    with torch.no_grad():
        torch.testing.assert_close(
            tower.encode_texts(TEXTS), backbone.encode_texts(TEXTS), rtol=1e-5, atol=1e-6
        )


def test_trimmed_features_equal_the_full_length_ones(backbone):
    tower = backbone.text_tower()
    tokens = tower.tokenize(TEXTS)
    eot = tower.eot_index(tokens)
    with torch.no_grad():
        emb = tower.embed(tokens)
        emb[:, 1:5] = torch.randn(len(TEXTS), 4, tower.width)  # learned vectors spliced in
        full = tower.encode(emb, eot, trim=False)
        torch.testing.assert_close(tower.encode(emb, eot), full, rtol=1e-5, atol=1e-5)
        # what comes after the EOT token cannot matter
        after = int(eot.max()) + 1
        emb[:, after:] = torch.randn_like(emb[:, after:])
        torch.testing.assert_close(tower.encode(emb, eot, trim=False), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_both_attention_implementations(folder, attn):
    model, tower = _tower_of(folder, attn_implementation=attn)
    tokens = tower.tokenize(TEXTS)
    with torch.no_grad():
        got = tower.encode(tower.embed(tokens), tower.eot_index(tokens))
    torch.testing.assert_close(got, _get_text_features(model, tokens), rtol=1e-5, atol=1e-6)


def test_configs_before_the_eos_fix_pool_at_the_largest_id(folder):
    """Configs written before transformers#24773 carry eos_token_id 2; transformers then pools
    at the largest token id (OpenAI's rule), and so does the tower."""
    model, _ = _tower_of(folder)
    model.text_model.eos_token_id = 2
    tower = HFTextTower(model, transformers.AutoTokenizer.from_pretrained(folder), 77, 100.0)
    tokens = tower.tokenize(TEXTS)
    tokens[0, 3] = 49407  # an EOT id inside the prompt: the first one is no longer the pooled one
    assert torch.equal(tower.eot_index(tokens), tokens.argmax(-1))
    with torch.no_grad():
        got = tower.encode(tower.embed(tokens), tower.eot_index(tokens))
    torch.testing.assert_close(got, _get_text_features(model, tokens), rtol=1e-5, atol=1e-6)


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


def test_siglip_has_no_tower(backbone):
    config = transformers.SiglipConfig(
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "vocab_size": 64},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 16, "patch_size": 8},
    )  # fmt: skip
    with pytest.raises(BackboneError, match="siglip models do not have one"):
        HFTextTower(transformers.SiglipModel(config), None, 64, 10.0)


def _task(backbone, n_per_class=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    c, d = len(CLASSES), backbone.embed_dim
    centres = torch.randn(c, d, generator=g)
    labels = torch.arange(c).repeat_interleave(n_per_class)
    feats = 3 * centres[labels] + torch.randn(len(labels), d, generator=g)
    weights = l2_normalize(backbone.encode_texts([f"a photo of a {n}." for n in CLASSES]))
    return Task(CLASSES, weights, FeatureSet(feats, labels), text_tower=backbone.text_tower())


def test_coop_starts_from_transformers_own_prompt_features(backbone):
    """A phrase start with no training is the hand-written prompt as transformers encodes it."""
    m = CoOp(ctx_init="a photo of a", epochs=0).fit(_task(backbone))
    want = l2_normalize(
        backbone.encode_texts([f"a photo of a {n.replace('_', ' ')}." for n in CLASSES])
    )
    torch.testing.assert_close(m.text_features_, want, rtol=1e-4, atol=1e-5)


def _support_loss(method, task) -> float:
    logits = method.logits(task.support.features)
    return float(torch.nn.functional.cross_entropy(logits, task.support.labels))


def test_coop_trains_through_the_hf_tower(backbone):
    """CoOp trains its context through the transformers text encoder. The tiny random model
    encodes the three class prompts to nearly one direction (cosine 0.7-0.98), so a shared
    context only lowers the support loss (measured: by 3-9x over seeds 0-2); class-specific
    contexts fit the support set (measured: 96% from 21-71%). Trimmed training is the untrimmed
    one."""
    task = _task(backbone)
    x, y = task.support.features, task.support.labels
    shared = [CoOp(n_ctx=4, epochs=e, batch_size=8).fit(task) for e in (0, 40)]
    assert _support_loss(shared[1], task) < 0.5 * _support_loss(shared[0], task)
    before = CoOp(n_ctx=4, csc=True, epochs=0).fit(task).score(x, y)
    after = CoOp(n_ctx=4, csc=True, epochs=40, batch_size=8).fit(task)
    assert before < 0.75
    assert after.score(x, y) > 0.9
    a = CoOp(n_ctx=4, epochs=3, batch_size=8).fit(task)
    b = CoOp(n_ctx=4, epochs=3, batch_size=8, trim=False).fit(task)
    torch.testing.assert_close(a.ctx_, b.ctx_, rtol=1e-4, atol=1e-6)
