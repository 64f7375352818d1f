"""Zero-shot text weights."""

from __future__ import annotations

import pytest
import torch
from open_clip import build_zero_shot_classifier

import fewclip.backbones as fb
from fewclip.text import prompt_embeddings, prompts, text_weights


@pytest.fixture(scope="module")
def bb() -> fb.Backbone:
    return fb.load("fewclip-tiny-vit")


CLASSES = ["cat", "golden retriever", "sea lion"]
TEMPLATES = ["a photo of a {}.", "a blurry photo of the {}.", "itap of a {}."]


def test_equals_open_clip_zero_shot_classifier(bb: fb.Backbone) -> None:
    ours = text_weights(bb, CLASSES, TEMPLATES)
    theirs = build_zero_shot_classifier(
        bb.model, bb.tokenizer, CLASSES, TEMPLATES, num_classes_per_batch=2, device="cpu"
    )
    assert ours.shape == (3, bb.embed_dim)
    torch.testing.assert_close(ours, theirs.T, rtol=1e-5, atol=1e-6)
    callables = [lambda c, t=t: t.format(c) for t in TEMPLATES]
    torch.testing.assert_close(text_weights(bb, CLASSES, callables), ours)


def test_formula_and_underscores(bb: fb.Backbone) -> None:
    assert prompts(["sea_lion"], ["a {}."]) == ["a sea lion."]
    w = text_weights(bb, ["sea_lion", "cat"], TEMPLATES)
    torch.testing.assert_close(w, text_weights(bb, ["sea lion", "cat"], TEMPLATES))
    raw = bb.encode_texts([t.format(c) for c in ["sea lion", "cat"] for t in TEMPLATES])
    raw = raw.view(2, 3, -1)
    expected = raw / raw.norm(dim=-1, keepdim=True)
    expected = expected.mean(dim=1)
    expected = expected / expected.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(w, expected)
    torch.testing.assert_close(w.norm(dim=-1), torch.ones(2))


def test_text_cache(tmp_path, bb: fb.Backbone, monkeypatch: pytest.MonkeyPatch) -> None:
    first = text_weights(bb, CLASSES, TEMPLATES, store=tmp_path)
    calls = []
    original = bb.encode_texts
    monkeypatch.setattr(bb, "encode_texts", lambda *a, **k: calls.append(1) or original(*a, **k))
    second = text_weights(bb, CLASSES, TEMPLATES, store=tmp_path)
    assert calls == []
    torch.testing.assert_close(first, second)
    raw = prompt_embeddings(bb, CLASSES, TEMPLATES, store=tmp_path)
    assert raw.shape == (3, 3, bb.embed_dim)
    text_weights(bb, CLASSES, TEMPLATES[:2], store=tmp_path)
    assert calls == [1]


def test_bad_inputs(bb: fb.Backbone) -> None:
    with pytest.raises(ValueError, match="classnames"):
        text_weights(bb, [], TEMPLATES)
    with pytest.raises(ValueError, match="templates"):
        text_weights(bb, CLASSES, ["no placeholder"])
    with pytest.raises(ValueError, match="templates"):
        text_weights(bb, CLASSES, "a {}")  # type: ignore[arg-type]


def test_sentence_weights_equal_text_weights_and_allow_ragged(tmp_path, bb: fb.Backbone) -> None:
    sentences = [[t.format(c) for t in TEMPLATES] for c in CLASSES]
    from fewclip.text import sentence_weights

    torch.testing.assert_close(
        sentence_weights(bb, sentences, store=tmp_path), text_weights(bb, CLASSES, TEMPLATES)
    )
    ragged = [["a cat."], ["a dog.", "a big dog.", "a small dog."]]
    w = sentence_weights(bb, ragged)
    raw = bb.encode_texts(["a cat.", "a dog.", "a big dog.", "a small dog."])
    raw = raw / raw.norm(dim=-1, keepdim=True)
    dog = raw[1:].mean(dim=0)
    torch.testing.assert_close(w[0], raw[0])
    torch.testing.assert_close(w[1], dog / dog.norm())
    with pytest.raises(ValueError, match="no sentences"):
        sentence_weights(bb, [["a cat."], []])
