"""TIP-X against explicit loops: the KL matrix, the logit formula and the reference search."""

import itertools
import math

import numpy as np
import pytest
import torch
from tests.methods._helpers import make_shuffled_task as make_task
from tests.methods._helpers import np_unit as _unit

from fewclip import functional as F
from fewclip import methods
from fewclip.methods.tip_x import image_text_signature, kl_divergence_matrix

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def task64():
    return make_task(c=4, shots=3, d=8, views=3, seed=2, dtype=torch.float64)


def test_kl_divergence_matrix_matches_a_double_loop():
    g = torch.Generator().manual_seed(1)
    p = torch.softmax(torch.randn(5, 6, generator=g, dtype=torch.float64), 1)
    q = torch.softmax(torch.randn(7, 6, generator=g, dtype=torch.float64), 1)
    p[0, 2] = 0.0  # 0·log 0 = 0
    expected = np.zeros((5, 7))
    for i, j in itertools.product(range(5), range(7)):
        expected[i, j] = sum(
            p[i, c].item() * (math.log(p[i, c].item()) - math.log(q[j, c].item()))
            for c in range(6)
            if p[i, c] > 0
        )
    np.testing.assert_allclose(kl_divergence_matrix(p, q).numpy(), expected, rtol=1e-12)


def _tipx_logits_loop(task, queries, ranges_from, alpha, beta, gamma, tau=0.5):
    """TIP-X logits with the KL matrix and ψ built from explicit double loops."""
    text = _unit(task.text_weights.numpy())
    keys = _unit(task.support.views.numpy().mean(0))
    labels = task.support.labels.numpy()

    def sig(v):
        z = v @ text.T / tau
        e = np.exp(z - z.max())
        return e / e.sum()

    def kl(a, b):
        return sum(pa * (math.log(pa) - math.log(pb)) for pa, pb in zip(a, b, strict=True))

    ref = _unit(ranges_from.numpy())
    kls = [kl(sig(r), sig(k)) for r in ref for k in keys]
    affs = [float(r @ k) for r in ref for k in keys]
    slope = (max(affs) - min(affs)) / (max(kls) - min(kls))
    out = []
    for q in _unit(queries.numpy()):
        logits = 100.0 * text @ q
        for j, k in enumerate(keys):
            psi = (kl(sig(q), sig(k)) - min(kls)) * slope + min(affs)
            logits[labels[j]] += alpha * math.exp(-beta * (1 - q @ k)) - gamma * psi
        out.append(logits)
    return np.stack(out)


@pytest.mark.parametrize("with_val", [True, False])
def test_tip_x_logits_follow_the_formula(task64, queries64, with_val):
    task = task64 if with_val else task64.without_val()
    tipx = methods.create(
        "tip-x", alpha=2.0, beta=3.0, gamma=0.7, search=False, dtype="float64"
    ).fit(task)
    ranges_from = task64.val.features if with_val else task64.support.features
    expected = _tipx_logits_loop(task64, queries64, ranges_from, 2.0, 3.0, 0.7)
    np.testing.assert_allclose(tipx.logits(queries64).numpy(), expected, rtol=1e-9)


def test_tip_x_signature_and_gamma_zero_is_tip_adapter(task64, queries64):
    w = F.l2_normalize(task64.text_weights)
    x = F.l2_normalize(queries64)
    sig = image_text_signature(x, w, temperature=0.5)
    torch.testing.assert_close(sig, torch.softmax(2 * x @ w.T, 1))
    tipx = methods.create("tip-x", alpha=1.1, beta=2.5, gamma=0.0, search=False).fit(task64)
    tip = methods.create("tip-adapter", alpha=1.1, beta=2.5, search=False).fit(task64)
    torch.testing.assert_close(tipx.logits(queries64), tip.logits(queries64))


def test_tip_x_search_selects_the_reference_point():
    task = make_task(c=4, shots=3, d=8, views=2, seed=7, dtype=torch.float64)
    tipx = methods.create(
        "tip-x", search_scale=(50, 50, 30), search_step=(8, 5, 6), dtype="float64"
    ).fit(task)
    betas = [i * 49 / 8 + 1 for i in range(8)]
    alphas, gammas = F.reference_grid(50, 5), F.reference_grid(30, 6)
    xv, yv = task.val.features, task.val.labels
    best, point = 0.0, None
    for a, b, gm in itertools.product(alphas, betas, gammas):  # the reference: α, β, γ
        m = methods.create("tip-x", alpha=a, beta=b, gamma=gm, search=False, dtype="float64")
        acc = 100.0 * m.fit(task).score(xv, yv)
        if acc > best:
            best, point = acc, (a, b, gm)
    assert (tipx.alpha_, tipx.beta_, tipx.gamma_) == point
    assert tipx.val_accuracy_ == pytest.approx(best)
