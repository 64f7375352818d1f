"""CoCoOp: training steps and scores recomputed from the definition as the reference computes
them, one image at a time (meta-net shift, the image's own C prompts through open_clip's own
text forward, no fewclip code), and the text tower's part in prediction and loading."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from tests.methods._helpers import rewrite_state
from tests.methods._prompt_reference import (
    make_task,
    open_clip_text,
    phrase_vectors,
    prompt_tokens,
    sgd,
)

import fewclip.backbones as fb
from fewclip import methods
from fewclip.errors import InvalidTypeError, InvalidValueError
from fewclip.functional import l2_normalize
from fewclip.methods._training import dassl_epoch
from fewclip.methods.cocoop import CoCoOp
from fewclip.task import FeatureSet, Task
from fewclip.testing.text_tower import ToyTextTower

NAMES = ("ctx_", "meta_w1_", "meta_b1_", "meta_w2_", "meta_b2_")


@pytest.fixture(scope="module")
def backbone() -> fb.Backbone:
    return fb.load("fewclip-tiny-vit")


def _reference_logits(backbone, params, x, names=None):
    """The reference's CustomCLIP.forward: per image, ctx + meta_net(x̂) for every class (the
    task's, or ``names``)."""
    ctx, w1, b1, w2, b2 = params
    if names is None:
        tokens = prompt_tokens(backbone, "a photo of a")
    else:
        tokens = backbone.tokenize([f"a photo of a {n.replace('_', ' ')}." for n in names])
    x = F.normalize(x, dim=-1)
    rows = []
    for xi in x:
        shift = torch.relu(xi @ w1.T + b1) @ w2.T + b2
        text = F.normalize(open_clip_text(backbone.model, tokens, ctx + shift), dim=-1)
        rows.append(backbone.logit_scale * xi @ text.T)
    return torch.stack(rows)


def _grads(backbone, params, x, y):
    leaves = [p.clone().requires_grad_(True) for p in params]
    loss = F.cross_entropy(_reference_logits(backbone, leaves, x), y)
    return torch.autograd.grad(loss, leaves)


def _start(task):
    m = CoCoOp(epochs=0).fit(task)
    return [getattr(m, k).clone() for k in NAMES]


def test_the_start_is_the_phrase_and_a_default_initialised_meta_net(backbone):
    ctx, w1, b1, w2, b2 = _start(make_task(backbone))
    torch.testing.assert_close(ctx, phrase_vectors(backbone, "a photo of a"))
    d, w = backbone.embed_dim, 32
    assert (w1.shape, b1.shape, w2.shape, b2.shape) == ((d // 16, d), (d // 16,), (w, 4), (w,))
    for group, fan_in in (((w1, b1), d), ((w2, b2), d // 16)):
        values, bound = torch.cat([t.flatten() for t in group]), 1 / math.sqrt(fan_in)
        assert float(values.abs().max()) <= bound  # nn.Linear's bound, ±1/√fan_in
        # uniform over the whole interval: both ends are reached, the middle is zero
        assert float(values.min()) < -0.8 * bound
        assert float(values.max()) > 0.8 * bound
        assert abs(float(values.mean())) < 0.2 * bound
        for t in group:  # the biases too
            assert float(t.min()) < 0 < float(t.max())


def test_the_meta_net_s_hidden_layer_is_a_sixteenth_of_the_features():
    """H = D // 16 as in the reference (D = 64 gives 4); at D = 16, H = 1."""
    tower = ToyTextTower(16, width=8)
    names = ["red circle", "blue square"]
    g = torch.Generator().manual_seed(0)
    task = Task(
        names,
        l2_normalize(tower.encode_texts([f"a photo of a {n}." for n in names])),
        FeatureSet(torch.randn(4, 16, generator=g), torch.tensor([0, 0, 1, 1])),
        text_tower=tower,
    )
    m = CoCoOp(epochs=0).fit(task)
    assert (m.meta_w1_.shape, m.meta_w2_.shape) == ((1, 16), (8, 1))


def test_one_step_is_sgd_on_every_image_s_own_prompts(backbone):
    task = make_task(backbone)
    x, y = task.support.features, task.support.labels
    start = _start(task)
    grads = _grads(backbone, start, x, y)
    m = CoCoOp(epochs=1, warmup_epochs=0, batch_size=64).fit(task)
    for name, p, g in zip(NAMES, start, grads, strict=True):
        want, _ = sgd(p, g, lr=2e-3)
        torch.testing.assert_close(getattr(m, name), want, rtol=1e-4, atol=1e-7, msg=name)


def test_two_epochs_follow_the_warm_up_and_momentum(backbone):
    task = make_task(backbone)
    x, y = task.support.features, task.support.labels
    p0 = _start(task)
    g0 = _grads(backbone, p0, x, y)
    step1 = [sgd(p, g, lr=1e-5) for p, g in zip(p0, g0, strict=True)]
    p1 = [p for p, _ in step1]
    g1 = _grads(backbone, p1, x, y)
    want = [
        sgd(p, g, lr=2e-3, momentum_buf=buf)[0]
        for p, g, (_, buf) in zip(p1, g1, step1, strict=True)
    ]
    m = CoCoOp(epochs=2, batch_size=64).fit(task)
    for name, w in zip(NAMES, want, strict=True):
        torch.testing.assert_close(getattr(m, name), w, rtol=1e-4, atol=1e-7, msg=name)


def test_batch_one_steps_image_by_image(backbone):
    """The released batch of one: one SGD step per image, in the epoch's shuffled order."""
    task = make_task(backbone, n_per_class=2)
    x, y = task.support.features, task.support.labels
    params = _start(task)
    order = dassl_epoch(len(y), 1, 1, torch.Generator().manual_seed(1)).order
    bufs = [None] * 5
    for i in order.tolist():
        grads = _grads(backbone, params, x[i : i + 1], y[i : i + 1])
        steps = [
            sgd(p, g, lr=2e-3, momentum_buf=b) for p, g, b in zip(params, grads, bufs, strict=True)
        ]
        params, bufs = [p for p, _ in steps], [b for _, b in steps]
    m = CoCoOp(epochs=1, warmup_epochs=0).fit(task)
    for name, w in zip(NAMES, params, strict=True):
        torch.testing.assert_close(getattr(m, name), w, rtol=1e-4, atol=1e-6, msg=name)


def test_scores_are_each_image_against_its_own_prompts(backbone):
    task = make_task(backbone)
    m = CoCoOp(epochs=2, batch_size=4).fit(task)
    x = torch.randn(5, backbone.embed_dim, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = _reference_logits(backbone, [getattr(m, k) for k in NAMES], x)
    got = m.logits(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    m.set_params(prompt_batch=3)  # one image (three prompts) a pass: the same scores
    torch.testing.assert_close(m.logits(x), got, rtol=1e-5, atol=1e-5)
    m.set_params(prompt_batch=1)  # fewer prompts than classes: still one image a pass
    torch.testing.assert_close(m.logits(x), got, rtol=1e-5, atol=1e-5)


def test_new_classes_are_scored_with_their_own_prompts(backbone, tmp_path):
    """for_classes keeps the context and the meta-net and scores each image against the new
    names' prompts, as the reference evaluates new classes (its prompt learner rebuilt with
    the test classes' names)."""
    task = make_task(backbone)
    m = CoCoOp(epochs=2, batch_size=4).fit(task)
    x = torch.randn(5, backbone.embed_dim, generator=torch.Generator().manual_seed(2))
    before = m.logits(x)
    names = ["yellow star", "purple_hexagon"]
    weights = backbone.encode_texts([f"a photo of a {n}." for n in names])
    new = m.for_classes(names, weights, text_tower=backbone.text_tower())
    with torch.no_grad():
        want = _reference_logits(backbone, [getattr(m, k) for k in NAMES], x, names)
    got = new.logits(x)
    assert got.shape == (5, 2)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert torch.equal(m.logits(x), before)  # the fitted method is unchanged
    # without a tower argument, the tower it holds builds the prompts
    torch.testing.assert_close(m.for_classes(names, weights).logits(x), got)
    m.save(tmp_path / "cc")
    with pytest.raises(InvalidValueError) as e:
        methods.load(tmp_path / "cc").for_classes(names, weights)  # loaded: no tower yet
    assert str(e.value) == (
        "text_tower: cocoop builds the new classes' prompts through the text encoder; pass "
        "text_tower=backbone.text_tower() (the backbone it was fitted with)"
    )
    # a loaded method given the tower scores the new classes as the fitted one does
    loaded_new = methods.load(tmp_path / "cc").for_classes(
        names, weights, text_tower=backbone.text_tower()
    )
    torch.testing.assert_close(loaded_new.logits(x), got)


def test_a_loaded_method_scores_once_its_tower_is_attached(backbone, tmp_path):
    task = make_task(backbone)
    m = CoCoOp(epochs=2, batch_size=4).fit(task)
    m.save(tmp_path / "cc")
    loaded = methods.load(tmp_path / "cc")
    assert isinstance(loaded, CoCoOp)
    assert loaded.get_params() == m.get_params()
    assert not loaded.can_score
    x = task.support.features
    with pytest.raises(InvalidValueError) as e:
        loaded.logits(x)
    assert str(e.value) == (
        "cocoop scores each image through the text tower, and this one has none: call "
        "attach_text_tower(backbone.text_tower()) with the backbone it was fitted on "
        "(fewclip.Adapter.load_backbone does it)"
    )
    with pytest.raises(InvalidTypeError) as e:
        loaded.attach_text_tower(backbone)
    assert str(e.value) == (
        "tower: expected a fewclip.text_tower.TextTower (backbone.text_tower()), found "
        f"{type(backbone).__name__}"
    )
    # another feature size, or the same feature size with another token width
    for tower, dim, width in ((ToyTextTower(16), 16, 16), (ToyTextTower(64, width=16), 64, 16)):
        with pytest.raises(InvalidValueError) as e:
            loaded.attach_text_tower(tower)
        assert str(e.value) == (
            f"tower: features of dimension {dim} and token width {width}, but cocoop was "
            "fitted with 64 and 32 (a tower of another backbone?)"
        )
    shorter = methods.load(tmp_path / "cc").set_params(ctx_init="a photo of")
    with pytest.raises(InvalidValueError) as e:
        shorter.attach_text_tower(backbone.text_tower())
    assert str(e.value) == "tower: its prompts hold 3 context vectors, the fitted context 4"
    assert loaded.attach_text_tower(backbone.text_tower()) is loaded
    assert loaded.can_score
    assert torch.equal(loaded.logits(x), m.logits(x))
    empty = loaded.logits(x[:0].double())
    assert (empty.shape, empty.dtype) == ((0, 3), torch.float32)


@pytest.mark.parametrize(
    ("name", "shape", "expected"),
    [
        ("meta_b1_", (3,), "meta_b1_: shape (3,) does not fit a CoCoOp on 64 features"),
        ("ctx_", (32,), "ctx_: shape (32,) does not fit a CoCoOp on 64 features"),
        ("meta_w2_", (32, 3), "meta_w2_: shape (32, 3) does not fit a CoCoOp on 64 features"),
    ],
)
def test_a_saved_state_with_wrong_shapes_is_refused_on_load(
    backbone, tmp_path, name, shape, expected
):
    """CoCoOp is loaded without a tower, so no probe query can run: its tensors' shapes are
    checked against each other and the feature size, and a wrong one names itself."""
    from fewclip.errors import DamagedFileError
    from fewclip.methods.base import REFIT_HINT

    m = CoCoOp(epochs=1, batch_size=64).fit(make_task(backbone))
    assert getattr(m, name).shape != shape  # ctx_ (4, 32), meta_b1_ (4,), meta_w2_ (32, 4)
    m.save(tmp_path / "cc")
    rewrite_state(tmp_path / "cc", "cocoop", **{name: torch.zeros(shape)})
    with pytest.raises(DamagedFileError) as e:
        methods.load(tmp_path / "cc")
    assert str(e.value) == f"{expected}; {REFIT_HINT}"


def test_export_is_refused_with_the_reason():
    assert CoCoOp.predicts_with_text_tower
    assert "depend on each image" in (CoCoOp.export_refusal or "")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"prompt_batch": 0}, "prompt_batch: expected a positive integer, found 0"),
        ({"epochs": "auto"}, "epochs: expected a non-negative integer, found 'auto'"),
        ({"batch_size": 0}, "batch_size: expected a positive integer"),
        ({"n_ctx": 0, "ctx_init": ""}, "n_ctx: expected a positive integer"),
        ({"warmup_lr": -1.0}, "warmup_lr: expected a non-negative learning rate"),
        ({"scale": -2.0}, "scale: expected a positive number or None"),
    ],
)
def test_bad_parameters_are_named(backbone, params, message):
    with pytest.raises(ValueError, match=message):
        CoCoOp(**{"epochs": 1, **params}).fit(make_task(backbone))
