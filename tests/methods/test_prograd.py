"""ProGrad: the projection written out by hand, and training steps recomputed from the
definition (two losses, two gradients, the conflicting part removed) with open_clip's own text
forward, no fewclip code."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.methods._prompt_reference import (
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
from fewclip.methods.prograd import ProGrad, prograd_direction
from fewclip.task import Task


@pytest.fixture(scope="module")
def backbone() -> fb.Backbone:
    return fb.load("fewclip-tiny-vit")


def _reference_direction(a, b, lam):
    """Prompt-align's rule as written there: normalise both, compare the cosine with 0, and
    remove λ times the component of ``a`` along ``b / ‖b‖``."""
    b_hat = b / torch.linalg.norm(b)
    a_hat = a / torch.linalg.norm(a)
    if torch.dot(a_hat.flatten(), b_hat.flatten()) < 0:
        return a - lam * torch.dot(a.flatten(), b_hat.flatten()) * b_hat, True
    return a, False


def test_the_direction_removes_the_conflicting_component_only():
    g, ref = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    torch.testing.assert_close(prograd_direction(g, ref), torch.tensor([0.5, 0.5]))
    assert float(torch.dot(prograd_direction(g, ref), ref)) == pytest.approx(0.0)
    torch.testing.assert_close(prograd_direction(g, ref, 0.5), torch.tensor([0.75, 0.25]))
    agree = torch.tensor([1.0, 2.0])
    assert prograd_direction(g, agree) is g  # g · ref ≥ 0: unchanged
    assert prograd_direction(g, torch.zeros(2)) is g  # no reference direction
    assert prograd_direction(torch.zeros(2), ref).abs().sum() == 0


def test_the_direction_of_a_matrix_is_that_of_its_flattened_entries():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 3, generator=gen), torch.randn(4, 3, generator=gen)
    b = b - ((a * b).sum() / (a * a).sum() + 1) * a  # a · b = −‖a‖²: they conflict
    want, conflict = _reference_direction(a, b, 0.8)
    assert conflict
    torch.testing.assert_close(prograd_direction(a, b, 0.8), want)
    flat = prograd_direction(a.flatten(), b.flatten(), 0.8)
    torch.testing.assert_close(prograd_direction(a, b, 0.8), flat.reshape(4, 3))


def _rolled_task(backbone):
    """The task with its text weights rolled by one class (a teacher that prefers another
    class). On the tiny random tower this teacher's gradient happens to agree with the
    cross-entropy's at ProGrad's start, while the task's own teacher conflicts with it: the
    tests below assert which case they are in."""
    t = make_task(backbone)
    return Task(t.classnames, t.text_weights.roll(1, 0), t.support, text_tower=t.text_tower)


def _gradients(backbone, task, ctx, temperature=1.0):
    tokens = prompt_tokens(backbone, " ".join(["X"] * 12) + " a photo of a")
    x, y = task.support.features, task.support.labels
    logits, _ = coop_logits(backbone, tokens, ctx, x)
    zero_shot = backbone.logit_scale * F.normalize(x, dim=-1) @ task.text_weights.T
    t = temperature
    kl = -(F.softmax(zero_shot / t, -1) * F.log_softmax(logits / t, -1)).sum(1).mean() * t * t
    (g_kl,) = torch.autograd.grad(kl, ctx, retain_graph=True)
    (g_ce,) = torch.autograd.grad(F.cross_entropy(logits, y), ctx)
    return g_ce, g_kl


def _start(backbone):
    """ProGrad's start: 12 zero vectors, then the embeddings of "a photo of a"."""
    return torch.cat([torch.zeros(12, 32), phrase_vectors(backbone, "a photo of a")])


def test_the_start_is_zeros_then_the_phrase(backbone):
    m = ProGrad(epochs=0).fit(make_task(backbone))
    torch.testing.assert_close(m.ctx_, _start(backbone), rtol=0, atol=0)


def test_one_step_is_sgd_along_the_projected_gradient(backbone):
    task = make_task(backbone)
    start = _start(backbone)
    ctx = start.clone().requires_grad_(True)
    g_ce, g_kl = _gradients(backbone, task, ctx, temperature=2.0)
    g, conflict = _reference_direction(g_ce, g_kl, 0.8)
    assert conflict  # the case this test is about
    want, _ = sgd(start, g, lr=2e-3)
    m = ProGrad(epochs=1, warmup_epochs=0, lam=0.8, temperature=2.0).fit(task)
    torch.testing.assert_close(m.ctx_, want, rtol=1e-4, atol=1e-7)


def test_two_epochs_follow_the_warm_up_and_momentum(backbone):
    task = make_task(backbone)
    c0 = _start(backbone)
    g0, conflict0 = _reference_direction(*_gradients(backbone, task, c0.requires_grad_(True)), 1.0)
    c1, buf = sgd(c0.detach(), g0, lr=1e-5)
    g1, conflict1 = _reference_direction(*_gradients(backbone, task, c1.requires_grad_(True)), 1.0)
    c2, _ = sgd(c1.detach(), g1, lr=2e-3, momentum_buf=buf)
    assert conflict0
    assert conflict1
    m = ProGrad(epochs=2).fit(task)
    # two float32 passes through the tower: the fit and the reference differ by up to ~2e-7
    # depending on the CPU's kernels; the smallest entry of the two-epoch step is 2e-5 (the
    # median 1e-2), so 1e-6 still tells a 5 % change of any entry's step
    torch.testing.assert_close(m.ctx_, c2, rtol=1e-4, atol=1e-6)


def test_without_a_conflict_the_step_is_the_cross_entropy_s(backbone):
    """When the gradients agree, the step is CoOp's cross-entropy step from the same start."""
    task = _rolled_task(backbone)
    start = _start(backbone)
    g_ce, g_kl = _gradients(backbone, task, start.clone().requires_grad_(True))
    assert float(torch.dot(g_ce.flatten(), g_kl.flatten())) > 0
    want, _ = sgd(start, g_ce, lr=2e-3)
    m = ProGrad(epochs=1, warmup_epochs=0).fit(task)
    torch.testing.assert_close(m.ctx_, want, rtol=1e-4, atol=1e-7)


def test_zero_lambda_is_coop(backbone):
    task = make_task(backbone, views=2)
    params = {"epochs": 3, "batch_size": 4, "ctx_init": "", "n_ctx": 4}
    a = ProGrad(lam=0.0, **params).fit(task)
    b = CoOp(**params).fit(task)
    torch.testing.assert_close(a.ctx_, b.ctx_, rtol=1e-6, atol=1e-8)


def test_a_template_makes_the_teacher_from_the_tower(backbone):
    """With ``template`` the teacher is the tower's features of the filled template, whatever
    the task's own zero-shot weights: the same fit as a task whose weights are those."""
    task = make_task(backbone)
    texts = [f"a {n.replace('_', ' ')} shape." for n in task.classnames]
    weights = F.normalize(backbone.encode_texts(texts), dim=-1)
    own = Task(task.classnames, weights, task.support, text_tower=task.text_tower)
    with_template = ProGrad(epochs=2, template="a {} shape.").fit(task)
    torch.testing.assert_close(with_template.ctx_, ProGrad(epochs=2).fit(own).ctx_)
    assert not torch.allclose(with_template.ctx_, ProGrad(epochs=2).fit(task).ctx_)


def test_save_and_load_keep_the_prompts_and_parameters(backbone, tmp_path):
    task = make_task(backbone)
    m = ProGrad(epochs=2, n_ctx=6, lam=0.8, temperature=2.0, template="a {} shape.").fit(task)
    m.save(tmp_path / "pg")
    loaded = methods.load(tmp_path / "pg")
    assert isinstance(loaded, ProGrad)
    assert loaded.get_params() == m.get_params()
    assert torch.equal(loaded.logits(task.support.features), m.logits(task.support.features))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"lam": -0.5}, "lam: expected a non-negative number, found -0.5"),
        ({"lam": float("inf")}, "lam: expected a non-negative number, found inf"),
        ({"temperature": 0.0}, "temperature: expected a positive number, found 0.0"),
        ({"temperature": True}, "temperature: expected a positive number, found True"),
        ({"template": "photo"}, "template: expected None or a text with one '{}'"),
        ({"n_ctx": 3}, "n_ctx: expected at least the 4 words of ctx_init 'a photo of a', found 3"),
        ({"epochs": -2}, "epochs: expected a non-negative integer"),
        ({"batch_size": 0}, "batch_size: expected a positive integer"),
    ],
)
def test_bad_parameters_are_named(backbone, params, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ProGrad(**{"epochs": 1, **params}).fit(make_task(backbone))


def test_without_its_projection_it_is_coop_with_the_same_settings(backbone):
    """At λ = 0 the projection removes nothing, so ProGrad given any CoOp setting must train
    exactly as CoOp given it: a setting ProGrad dropped on its way to CoOp would make the two
    differ (each setting at ProGrad's default is checked to change the result here)."""
    assert_trains_as_coop(make_task(backbone), lambda **kw: ProGrad(lam=0.0, **kw))
