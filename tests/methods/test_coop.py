"""CoOp: prompts assembled as the reference lays them out, and training steps recomputed from the
definition with open_clip's own text forward (full context, no trimming, no fewclip code)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.methods._prompt_reference import phrase_vectors

import fewclip.backbones as fb
from fewclip.functional import l2_normalize
from fewclip.methods.coop import CoOp, PromptContext, coop_epochs
from fewclip.task import FeatureSet, Task

CLASSES = ["red circle", "blue_square", "green triangle"]


@pytest.fixture(scope="module")
def backbone() -> fb.Backbone:
    return fb.load("fewclip-tiny-vit")


def _task(backbone, n_per_class=4, seed=0, tower=True):
    g = torch.Generator().manual_seed(seed)
    c, d = len(CLASSES), backbone.embed_dim
    centres = torch.randn(c, d, generator=g)
    labels = torch.arange(c).repeat_interleave(n_per_class)
    feats = 3 * centres[labels] + torch.randn(len(labels), d, generator=g)
    weights = l2_normalize(backbone.encode_texts([f"a photo of a {n}." for n in CLASSES]))
    return Task(
        CLASSES, weights, FeatureSet(feats, labels),
        text_tower=backbone.text_tower() if tower else None,
    )  # fmt: skip


def _reference_text(model, tokens, ctx, n_ctx):
    """open_clip's encode_text with token embeddings 1..n_ctx replaced by ``ctx`` (end)."""
    emb = model.token_embedding(tokens)
    shared = ctx.unsqueeze(0).expand(len(tokens), -1, -1)
    x = torch.cat([emb[:, :1], shared, emb[:, 1 + n_ctx :]], dim=1)
    x = x + model.positional_embedding
    x = model.transformer(x, attn_mask=model.attn_mask)
    x = model.ln_final(x)
    return x[torch.arange(len(tokens)), tokens.argmax(-1)] @ model.text_projection


def _loss(backbone, task, ctx, n_ctx):
    tokens = backbone.tokenize(
        [" ".join(["X"] * n_ctx) + f" {n.replace('_', ' ')}." for n in CLASSES]
    )
    text = F.normalize(_reference_text(backbone.model, tokens, ctx, n_ctx), dim=-1)
    logits = backbone.logit_scale * F.normalize(task.support.features, dim=-1) @ text.T
    return F.cross_entropy(logits, task.support.labels)


def test_one_step_is_sgd_on_the_cross_entropy_of_the_definition(backbone):
    task = _task(backbone)
    start = CoOp(n_ctx=4, epochs=0, seed=3).fit(task).ctx_
    assert start.shape == (4, 32)
    assert float(start.std()) == pytest.approx(0.02, rel=0.3)  # N(0, 0.02²)
    m = CoOp(n_ctx=4, epochs=1, warmup_epochs=0, batch_size=64, seed=3).fit(task)
    ctx = start.clone().requires_grad_(True)
    _loss(backbone, task, ctx, 4).backward()
    lr, wd = 2e-3, 5e-4  # epoch 0 without warm-up runs at the full rate (cos 0 = 1)
    want = start - lr * (ctx.grad + wd * start)
    torch.testing.assert_close(m.ctx_, want, rtol=1e-4, atol=1e-7)
    assert m.epochs_ == 1


def test_two_epochs_follow_the_warm_up_and_momentum(backbone):
    task = _task(backbone)
    start = CoOp(n_ctx=2, epochs=0, seed=5).fit(task).ctx_
    m = CoOp(n_ctx=2, epochs=2, batch_size=64, seed=5).fit(task)
    mom, wd = 0.9, 5e-4
    c0 = start.clone().requires_grad_(True)
    _loss(backbone, task, c0, 2).backward()
    v1 = c0.grad + wd * start
    c1 = start - 1e-5 * v1  # epoch 0: the constant warm-up rate
    c1g = c1.clone().requires_grad_(True)
    _loss(backbone, task, c1g, 2).backward()
    v2 = mom * v1 + c1g.grad + wd * c1
    c2 = c1 - 2e-3 * v2  # epoch 1: the cosine restarted after the warm-up, at its top
    torch.testing.assert_close(m.ctx_, c2, rtol=1e-4, atol=1e-7)


def test_prediction_uses_the_learned_prompts(backbone):
    task = _task(backbone)
    m = CoOp(n_ctx=4, epochs=1, warmup_epochs=0, batch_size=64, seed=3).fit(task)
    tokens = backbone.tokenize([f"X X X X {n.replace('_', ' ')}." for n in CLASSES])
    with torch.no_grad():
        text = F.normalize(_reference_text(backbone.model, tokens, m.ctx_, 4), dim=-1)
    x = task.support.features
    want = backbone.logit_scale * F.normalize(x, dim=-1) @ text.T
    torch.testing.assert_close(m.logits(x), want, rtol=1e-4, atol=1e-4)


def test_a_phrase_start_with_no_training_is_that_hand_written_prompt(backbone):
    task = _task(backbone)
    m = CoOp(ctx_init="a photo of a", epochs=0).fit(task)
    assert m.ctx_.shape == (4, 32)  # the phrase's word count sets M
    want = l2_normalize(
        backbone.encode_texts([f"a photo of a {n.replace('_', ' ')}." for n in CLASSES])
    )
    torch.testing.assert_close(m.text_features_, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("position", "layout"),
    [("end", "X X X X {}."), ("middle", "X X {} X X."), ("front", "{} X X X X.")],
)
def test_the_class_name_sits_where_the_position_says(backbone, position, layout):
    tower = backbone.text_tower()
    prompts = PromptContext(tower, CLASSES, n_ctx=4, init="", position=position)
    x_vec = tower.embed(tower.tokenize(["X"]))[0, 1]
    got = prompts.assemble(x_vec.expand(4, -1))
    texts = [layout.format(n.replace("_", " ")) for n in CLASSES]
    want = tower.embed(tower.tokenize(texts))
    assert torch.equal(got, want)


def test_a_kept_context_pads_the_phrase_with_x_and_reads_underscores_as_spaces(backbone):
    """With ``keep_n_ctx`` (ProGrad), M = 6 context vectors around a 4-word phrase: the
    prompts are "X X a photo of a {name}." (the pads' vectors start at zero, the phrase's at
    its embeddings), and the phrase "a_photo_of_a" is read as "a photo of a", as the
    reference does."""
    tower = backbone.text_tower()
    prompts = PromptContext(
        tower, CLASSES, n_ctx=6, init="a_photo_of_a", position="end", keep_n_ctx=True
    )
    texts = [f"X X a photo of a {n.replace('_', ' ')}." for n in CLASSES]
    tokens = tower.tokenize(texts)
    assert torch.equal(prompts.eot, tower.eot_index(tokens))
    want = tower.embed(tokens)
    assert torch.equal(prompts.assemble(want[0, 1:7]), want)
    phrase = phrase_vectors(backbone, "a photo of a")
    assert torch.equal(prompts.init_vectors, torch.cat([torch.zeros(2, 32), phrase]))


def test_class_specific_contexts_have_one_per_class(backbone):
    task = _task(backbone)
    m = CoOp(n_ctx=2, csc=True, epochs=1, batch_size=64, warmup_epochs=0).fit(task)
    assert m.ctx_.shape == (3, 2, 32)
    assert not torch.equal(m.ctx_[0], m.ctx_[1])  # trained apart


def test_training_fits_the_support_set(backbone):
    """The random tiny tower's prompts do not separate the classes' features; 40 epochs at the
    reference rate move the shared context until they nearly all do."""
    task = _task(backbone, n_per_class=8)
    x, y = task.support.features, task.support.labels
    before = CoOp(n_ctx=4, epochs=0).fit(task).score(x, y)
    after = CoOp(n_ctx=4, epochs=40, batch_size=8).fit(task).score(x, y)
    assert before < 0.6
    assert after > 0.9


def test_trimming_gives_the_untrimmed_training(backbone):
    task = _task(backbone)
    a = CoOp(n_ctx=4, epochs=3, batch_size=4).fit(task)
    b = CoOp(n_ctx=4, epochs=3, batch_size=4, trim=False).fit(task)
    torch.testing.assert_close(a.ctx_, b.ctx_, rtol=1e-4, atol=1e-6)


def test_epochs_follow_the_released_schedule():
    # 50 at 1 shot, 100 at 2 and 4, 200 past 4 (8 and 16 in the released scripts)
    assert [coop_epochs(k) for k in (1, 2, 4, 5, 8, 16)] == [50, 100, 100, 200, 200, 200]


def test_without_a_text_tower_the_error_says_how_to_get_one(backbone):
    with pytest.raises(ValueError, match=r"task.text_tower: .* text_tower=backbone.text_tower\(\)"):
        CoOp(epochs=0).fit(_task(backbone, tower=False))


def test_a_tower_of_another_dimension_is_refused(backbone):
    task = _task(backbone)
    with pytest.raises(
        ValueError, match="text_tower: its features have dimension 64, the task's 8"
    ):
        Task(
            CLASSES, torch.randn(3, 8), FeatureSet(torch.randn(3, 8), torch.arange(3)),
            text_tower=backbone.text_tower(),
        )  # fmt: skip
    assert task.without_val().text_tower is task.text_tower


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"class_token_position": "side"}, "class_token_position: expected one of"),
        ({"n_ctx": 0}, "n_ctx: expected a positive integer"),
        ({"epochs": -1}, "epochs: expected a non-negative integer"),
        ({"lr": -1.0}, "lr: expected a non-negative learning rate"),
        ({"scale": 0.0}, "scale: expected a positive number or None"),
    ],
)
def test_bad_parameters_are_named(backbone, params, message):
    with pytest.raises(ValueError, match=message):
        CoOp(**params).fit(_task(backbone))
