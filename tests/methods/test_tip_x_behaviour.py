"""TIP-X behaviour that tests/methods/test_tip_x.py leaves open.

Covers: the signature's default temperature; the logits at a temperature other than 0.5 (the
signatures of queries, keys and ψ's range all use it); a KL term whose divergences are all
equal (ψ flat); the order of the cache keys; the half-precision fitted state; no reported
search without one; the (α, β, γ) search when the best β and γ are inside their grids; and a
validation set whose affinity matrix is too large to keep.
"""

import itertools
import math

import pytest
import torch
from tests.methods._helpers import make_shuffled_task as make_task

from fewclip import functional as F
from fewclip import methods
from fewclip.methods.tip_x import image_text_signature
from fewclip.task import FeatureSet, Task

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def task64():
    return make_task(c=4, shots=3, d=8, views=3, seed=2, dtype=torch.float64)


def _unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def _kl_matrix(x, keys, text, tau):
    """KL(p(x_i) ‖ p(k_j)) with p = softmax(·Tᵀ/τ), by its definition (float64)."""
    p = torch.softmax(x @ text.T / tau, 1)
    q = torch.softmax(keys @ text.T / tau, 1)
    return (p[:, None, :] * (p[:, None, :].log() - q[None, :, :].log())).sum(-1)


def _tipx_logits(task, queries, ranges_from, alpha, beta, gamma, tau):
    """TIP-X's logits from the formula: ψ maps [min KL, max KL] over ``ranges_from`` × keys
    onto [min A, max A] of the affinities over the same pairs."""
    text = _unit(task.text_weights.double())
    keys = _unit(task.support.views.double().mean(0))
    onehot = torch.nn.functional.one_hot(task.support.labels, task.n_classes).double()
    ref = _unit(ranges_from.double())
    kl_ref, a_ref = _kl_matrix(ref, keys, text, tau), ref @ keys.T
    slope = (a_ref.max() - a_ref.min()) / (kl_ref.max() - kl_ref.min())
    x = _unit(queries.double())
    psi = (_kl_matrix(x, keys, text, tau) - kl_ref.min()) * slope + a_ref.min()
    cache = torch.exp(-beta * (1 - x @ keys.T))
    return 100 * x @ text.T + (alpha * cache - gamma * psi) @ onehot


def _n_correct(logits, y):
    """Images whose true class scores strictly above every other class (ties count as wrong,
    as the search counts)."""
    true = logits.gather(1, y[:, None])[:, 0]
    others = logits.scatter(1, y[:, None], float("-inf")).max(dim=1).values
    return int((true > others).sum())


# -- the signature and the temperature ---------------------------------------------------------
def test_signature_temperature_defaults_to_one_half(task64, queries64):
    """Without ``temperature`` the signature is ``softmax(x·Tᵀ / 0.5)``."""
    x, w = _unit(queries64), _unit(task64.text_weights)
    torch.testing.assert_close(image_text_signature(x, w), torch.softmax(2 * x @ w.T, 1))


@pytest.mark.parametrize("with_val", [True, False])
def test_tip_x_logits_at_another_temperature(task64, queries64, with_val):
    """τ = 0.25 is used for the queries', the keys' and ψ's signatures alike."""
    task = task64 if with_val else task64.without_val()
    tipx = methods.create(
        "tip-x", alpha=2.0, beta=3.0, gamma=0.7, temperature=0.25, search=False, dtype="float64"
    ).fit(task)
    ranges_from = task64.val.features if with_val else task64.support.features
    expected = _tipx_logits(task64, queries64, ranges_from, 2.0, 3.0, 0.7, 0.25)
    torch.testing.assert_close(tipx.logits(queries64), expected, rtol=1e-9, atol=1e-9)


def test_equal_divergences_make_the_kl_term_flat():
    """When every validation image has the same signature and so has every key, all the KL
    divergences are equal: ψ has no slope and the KL term is the constant −min A per key, for
    any query (the keys differ only off the text directions, so the cache term still varies)."""
    h = 0.5
    text = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    keys = torch.tensor(
        [[h, h, math.sqrt(0.5), 0.0], [h, h, 0.0, math.sqrt(0.5)]], dtype=torch.float64
    )
    vx = torch.tensor([[h, 0.0, h, h], [h, 0.0, h, -h]], dtype=torch.float64) * 2
    support = FeatureSet(keys.clone(), torch.tensor([0, 1]), keys.clone()[None])
    task = Task(["a", "b"], text, support, FeatureSet(vx, torch.tensor([0, 1])))
    tipx = methods.create(
        "tip-x", alpha=1.5, beta=2.0, gamma=0.8, search=False, dtype="float64"
    ).fit(task)
    assert tipx.kl_range_[0] == tipx.kl_range_[1]
    a_min = float((_unit(vx) @ keys.T).min())
    queries = torch.tensor([[1.0, 0.2, 0.3, -0.1], [0.1, 1.0, -0.4, 0.2]], dtype=torch.float64)
    x = _unit(queries)
    expected = 100 * x @ text.T + 1.5 * torch.exp(-2.0 * (1 - x @ keys.T)) - 0.8 * a_min
    torch.testing.assert_close(tipx.logits(queries), expected)


# -- fitted state --------------------------------------------------------------------------
def test_tip_x_keys_keep_the_support_order_within_a_class():
    """``keys_`` are sorted by class, and within a class they keep the support set's order
    (a stable sort; 100 shuffled support images)."""
    task = make_task(c=5, shots=20, d=8, views=2, seed=1)
    tipx = methods.create("tip-x", search=False).fit(task)
    labels = task.support.labels
    order = [i for c in range(5) for i in range(len(labels)) if labels[i] == c]
    assert torch.equal(tipx.keys_, F.cache_keys(task.support.views)[order])
    assert tipx.key_labels_.tolist() == sorted(labels.tolist())


def test_tip_x_half_precision_state(task64):
    """A float16 TIP-X stores every floating-point fitted tensor in float16."""
    tipx = methods.create("tip-x", search_step=(3, 2, 2), dtype="float16").fit(task64)
    for name in ("text_weights_", "keys_", "class_log_signature_", "class_counts_"):
        assert getattr(tipx, name).dtype == torch.float16, name
    assert tipx.class_counts_.tolist() == [3.0, 3.0, 3.0, 3.0]


@pytest.mark.parametrize("how", ["search=False", "no validation set"])
def test_without_a_search_nothing_is_reported(task64, how):
    """``val_accuracy_`` is None and no search is reported to the conformance suite."""
    kw = {"search_step": (3, 2, 2), "dtype": "float64"}
    if how == "search=False":
        tipx = methods.create("tip-x", search=False, **kw).fit(task64)
    else:
        tipx = methods.create("tip-x", **kw).fit(task64.without_val())
    assert tipx.val_accuracy_ is None
    assert tipx._selection() is None


# -- the (α, β, γ) search ---------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 4])
def test_tip_x_search_grids_inside_their_ranges(seed):
    """The reference loop (α outer, β, γ inner, strict >) over ``β_i = 1 + i·(9 − 1)/5``,
    ``α_i = 0.1 + i·(5 − 0.1)/4``, ``γ_i = 0.1 + i·(3 − 0.1)/4``; seed 0 picks the second β,
    seed 4 the third γ."""
    task = make_task(c=4, shots=3, d=8, views=2, seed=seed, dtype=torch.float64)
    tipx = methods.create(
        "tip-x", search_scale=(9.0, 5.0, 3.0), search_step=(5, 4, 4), dtype="float64"
    ).fit(task)
    betas = [1 + i * (9 - 1) / 5 for i in range(5)]
    alphas = [0.1 + i * (5 - 0.1) / 4 for i in range(4)]
    gammas = [0.1 + i * (3 - 0.1) / 4 for i in range(4)]
    x, y = task.val.features, task.val.labels
    best, point = -1, None
    for a, b, gm in itertools.product(alphas, betas, gammas):
        n = _n_correct(_tipx_logits(task, x, x, a, b, gm, 0.5), y)
        if n > best:
            best, point = n, (a, b, gm)
    assert (point[1], point[2]) != (betas[0], gammas[0])  # not the grids' shared start
    assert (tipx.alpha_, tipx.beta_, tipx.gamma_) == pytest.approx(point, rel=1e-12)
    assert tipx.val_accuracy_ == pytest.approx(100.0 * best / len(y))


@pytest.mark.slow
def test_tip_x_search_on_a_validation_set_too_large_to_keep_its_affinities():
    """16,400 validation images × 4,096 keys in float64 (537 MB, over the 512 MiB kept): ψ's
    range and the search cover every validation image. Each image lies near its class's text
    direction, so every one is right and the accuracy is 100%."""
    g = torch.Generator().manual_seed(0)
    eye = torch.eye(2, dtype=torch.float64)
    ys = torch.arange(2).repeat_interleave(2048)
    support = eye[ys] + 0.1 * torch.randn(4096, 2, generator=g, dtype=torch.float64)
    yv = torch.arange(2).repeat(8200)
    vx = eye[yv] + 0.1 * torch.rand(16400, 2, generator=g, dtype=torch.float64).abs()
    task = Task(["a", "b"], eye, FeatureSet(support, ys), FeatureSet(vx, yv))
    tipx = methods.create(
        "tip-x", search_scale=(2, 1, 1), search_step=(1, 1, 1), dtype="float64"
    ).fit(task)
    assert tipx.val_accuracy_ == 100.0
