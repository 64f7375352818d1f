"""KgCoOp: training steps recomputed from the definition (CE plus λ·(1 − mean cos) to the
hand-written prompts' features) with open_clip's own text forward, no fewclip code."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.methods._prompt_reference import (
    CLASSES,
    assert_trains_as_coop,
    coop_logits,
    make_task,
    phrase_vectors,
    prompt_tokens,
    sgd,
)

import fewclip.backbones as fb
from fewclip import methods
from fewclip.methods.coop import CoOp
from fewclip.methods.kgcoop import KgCoOp


@pytest.fixture(scope="module")
def backbone() -> fb.Backbone:
    return fb.load("fewclip-tiny-vit")


def _loss(backbone, task, ctx, target, weight):
    tokens = prompt_tokens(backbone, "a photo of a")
    logits, text = coop_logits(backbone, tokens, ctx, task.support.features)
    ce = F.cross_entropy(logits, task.support.labels)
    return ce + weight * (1 - F.cosine_similarity(text, target, dim=1, eps=1e-7).mean())


def test_the_start_is_the_released_phrase(backbone):
    m = KgCoOp(epochs=0).fit(make_task(backbone))
    torch.testing.assert_close(m.ctx_, phrase_vectors(backbone, "a photo of a"))
    assert m.ctx_.shape == (4, 32)  # "a photo of a": M = 4


def test_one_step_is_sgd_on_ce_plus_the_distance_to_the_task_prompts(backbone):
    task = make_task(backbone)
    start = phrase_vectors(backbone, "a photo of a")
    m = KgCoOp(epochs=1, warmup_epochs=0).fit(task)
    ctx = start.clone().requires_grad_(True)
    target = F.normalize(task.text_weights, dim=-1)
    _loss(backbone, task, ctx, target, 8.0).backward()
    want, _ = sgd(start, ctx.grad, lr=2e-3)  # no warm-up: epoch 0 at the full rate
    torch.testing.assert_close(m.ctx_, want, rtol=1e-4, atol=1e-7)


def test_two_epochs_with_a_template_follow_the_warm_up_and_momentum(backbone):
    """A ``template`` is encoded by the model (open_clip's ``encode_text`` here) as the target;
    two single-batch epochs: the warm-up rate, then the cosine's top with momentum."""
    task = make_task(backbone)
    template = "a drawing of a {}, a shape."
    with torch.no_grad():
        target = F.normalize(
            backbone.model.encode_text(
                backbone.tokenize([template.format(n.replace("_", " ")) for n in CLASSES])
            ),
            dim=-1,
        )
    m = KgCoOp(epochs=2, weight=3.0, template=template).fit(task)
    c0 = phrase_vectors(backbone, "a photo of a").requires_grad_(True)
    _loss(backbone, task, c0, target, 3.0).backward()
    c1, buf = sgd(c0.detach(), c0.grad, lr=1e-5)
    c1g = c1.clone().requires_grad_(True)
    _loss(backbone, task, c1g, target, 3.0).backward()
    c2, _ = sgd(c1, c1g.grad, lr=2e-3, momentum_buf=buf)
    torch.testing.assert_close(m.ctx_, c2, rtol=1e-4, atol=1e-7)


def test_zero_weight_is_coop(backbone):
    task = make_task(backbone, views=2)
    params = {"epochs": 3, "batch_size": 4, "ctx_init": "a photo of a"}
    a = KgCoOp(weight=0.0, **params).fit(task)
    b = CoOp(**params).fit(task)
    torch.testing.assert_close(a.ctx_, b.ctx_, rtol=0, atol=0)


def test_the_regulariser_keeps_the_prompts_near_the_hand_written_ones(backbone):
    """Both start from the task's own prompt; after forty epochs CoOp's prompts have drifted
    from it (the tiny random tower moves fast), KgCoOp's (λ = 8) stay clearly nearer."""
    task = make_task(backbone, n_per_class=8)
    params = {"epochs": 40, "batch_size": 8, "ctx_init": "a photo of a"}
    coop = CoOp(**params).fit(task)
    kg = KgCoOp(**params).fit(task)

    def distance(m):
        return float(1 - (m.text_features_ * task.text_weights).sum(1).mean())

    assert distance(coop) > 0.3
    assert distance(kg) < 0.7 * distance(coop)


def test_save_and_load_keep_the_prompts_and_parameters(backbone, tmp_path):
    task = make_task(backbone)
    m = KgCoOp(epochs=2, weight=2.5, template="a {} shape.").fit(task)
    m.save(tmp_path / "kg")
    loaded = methods.load(tmp_path / "kg")
    assert isinstance(loaded, KgCoOp)
    assert loaded.get_params() == m.get_params()
    x = task.support.features
    assert torch.equal(loaded.logits(x), m.logits(x))
    assert torch.equal(loaded.ctx_, m.ctx_)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"weight": -1.0}, "weight: expected a non-negative number, found -1.0"),
        ({"weight": float("nan")}, "weight: expected a non-negative number, found nan"),
        ({"weight": "8"}, "weight: expected a non-negative number, found '8'"),
        ({"weight": float("inf")}, "weight: expected a non-negative number, found inf"),
        ({"template": "a photo"}, "template: expected None or a text with one '{}'"),
        ({"template": "{} and {}"}, "template: expected None or a text with one '{}'"),
        ({"n_ctx": 0, "ctx_init": ""}, "n_ctx: expected a positive integer"),
        ({"lr": -1.0}, "lr: expected a non-negative learning rate"),
        ({"class_token_position": "side"}, "class_token_position: expected one of"),
    ],
)
def test_bad_parameters_are_named(backbone, params, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        KgCoOp(epochs=1, **params).fit(make_task(backbone))


def test_without_its_distance_term_it_is_coop_with_the_same_settings(backbone):
    """At weight 0 the knowledge term adds nothing, so KgCoOp given any CoOp setting must
    train exactly as CoOp given it: a setting KgCoOp dropped on its way to CoOp would make
    the two differ (each setting at KgCoOp's default is checked to change the result here)."""
    assert_trains_as_coop(make_task(backbone), lambda **kw: KgCoOp(weight=0.0, **kw))
