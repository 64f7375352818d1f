"""ZS-LP and CLAP: penalty weights, zero-shot start, steps against autograd + SGD, schedule."""

import numpy as np
import pytest
import torch
from tests.methods._helpers import make_clustered_task as make_task
from tests.methods._helpers import np_unit as _np_normalise

from fewclip import functional as F
from fewclip import methods
from fewclip.methods.clap import clap_penalty_weights
from fewclip.task import FeatureSet, Task


@pytest.fixture
def task64():
    return make_task(c=4, shots=5, d=8, views=3, seed=2, dtype=torch.float64)


def test_clap_penalty_weights_are_zero_shot_confidence(task64):
    lam = clap_penalty_weights(
        task64.support.views, task64.support.labels, F.l2_normalize(task64.text_weights)
    )
    views = _np_normalise(task64.support.views.numpy())
    t = _np_normalise(task64.text_weights.numpy())
    logits = 100 * views @ t.T  # (V, N, C)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    y = task64.support.labels.numpy()
    expected = [p[:, y == k, k].mean() for k in range(task64.n_classes)]
    np.testing.assert_allclose(lam.numpy(), expected, rtol=1e-12)
    clap = methods.create("clap", epochs=1, dtype="float64").fit(task64)
    torch.testing.assert_close(clap.penalty_weights_, lam)


def test_zs_lp_starts_at_zero_shot(task64, queries64):
    zs = methods.create("zero-shot", dtype="float64").fit(task64)
    for name in ("zs-lp", "clap"):
        for kw in ({"epochs": 0}, {"lr": 0.0, "warmup_lr": 0.0, "epochs": 3}):
            m = methods.create(name, dtype="float64", **kw).fit(task64)
            torch.testing.assert_close(m.logits(queries64), zs.logits(queries64))


def test_clap_reaches_a_stationary_point():
    """Full batch, one view: the iterate is a stationary point of CE + mean_k λ_k‖w_k − t_k‖²."""
    g = torch.Generator().manual_seed(0)
    means = torch.randn(3, 6, generator=g, dtype=torch.float64)
    y = torch.arange(3).repeat_interleave(20)
    x = means[y] + torch.randn(len(y), 6, generator=g, dtype=torch.float64)
    text = F.l2_normalize(means + torch.randn(3, 6, generator=g, dtype=torch.float64))
    task = Task(["a", "b", "c"], text, FeatureSet(x, y))
    clap = methods.create(
        "clap", epochs=500, batch_size=1000, warmup_epochs=0, scale=10.0, dtype="float64"
    ).fit(task)
    w = clap.prototypes_.clone().requires_grad_(True)
    lam = clap_penalty_weights(x[None], y, text, scale=10.0)
    logits = 10.0 * F.l2_normalize(x) @ F.l2_normalize(w).T
    anchor = 10.0 * text  # init_norm
    loss = torch.nn.functional.cross_entropy(logits, y) + (lam * (w - anchor).pow(2).sum(1)).mean()
    loss.backward()
    assert float(w.grad.norm()) < 1e-9
    assert not torch.allclose(clap.prototypes_, anchor)


@pytest.mark.parametrize("name", ["zs-lp", "clap"])
def test_zs_lp_steps_match_autograd_and_torch_sgd(task64, name):
    """The hand-written gradient against autograd + torch.optim.SGD, same sampling protocol."""
    kw = {"epochs": 3, "batch_size": 8, "weight_decay": 0.01, "seed": 4, "dtype": "float64"}
    m = methods.create(name, **kw).fit(task64)
    unit = F.l2_normalize(task64.text_weights)
    text = 10.0 * unit  # init_norm: start and anchor
    views, y = task64.support.views, task64.support.labels
    lam = clap_penalty_weights(views, y, unit) if name == "clap" else None
    w = torch.nn.Parameter(text.clone())
    opt = torch.optim.SGD([w], lr=1e-5, momentum=0.9, weight_decay=0.01)
    g = torch.Generator().manual_seed(4)
    n_views, n = views.shape[0], len(y)
    pool = views.reshape(n_views * n, -1)  # row view*n + image, as the released code's passes
    for epoch in range(3):
        opt.param_groups[0]["lr"] = m._lr_at(epoch)
        # the released epoch: Dassl's batch count over the n images, rows from the whole pool
        take = min((n // 8 if n >= 8 else 1) * 8, n_views * n)
        rows = torch.randperm(n_views * n, generator=g)[:take]
        for start in range(0, take, 8):
            flat = rows[start : start + 8]
            idx = flat % n
            x = F.l2_normalize(pool[flat])
            loss = torch.nn.functional.cross_entropy(100 * x @ F.l2_normalize(w).T, y[idx])
            if lam is not None:
                loss = loss + (lam * (w - text).pow(2).sum(1)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    torch.testing.assert_close(m.prototypes_, w.detach(), rtol=1e-10, atol=1e-12)


def test_zs_lp_is_clap_without_penalty(task64):
    zslp = methods.create("zs-lp", epochs=4, batch_size=8, dtype="float64")
    zslp.fit(task64)
    clap = methods.create("clap", epochs=4, batch_size=8, dtype="float64")
    text = 10.0 * F.l2_normalize(task64.text_weights)
    no_penalty = clap._train(task64, text, torch.zeros(task64.n_classes, dtype=torch.float64))
    torch.testing.assert_close(no_penalty, zslp.prototypes_)
    with_penalty = methods.create("clap", epochs=4, batch_size=8, dtype="float64").fit(task64)
    assert not torch.allclose(with_penalty.prototypes_, zslp.prototypes_)


def test_zs_lp_init_norm_is_a_step_size(task64):
    """Logits see ŵ only: starting at s·t with lr η is starting at t with lr η/s²."""
    kw = {"epochs": 4, "batch_size": 8, "dtype": "float64"}
    big = methods.create("zs-lp", init_norm=10.0, lr=0.1, warmup_lr=1e-5, **kw).fit(task64)
    unit = methods.create("zs-lp", init_norm=1.0, lr=1e-3, warmup_lr=1e-7, **kw).fit(task64)
    torch.testing.assert_close(big.prototypes_ / 10.0, unit.prototypes_, rtol=1e-9, atol=1e-12)


def test_zs_lp_and_clap_never_use_validation(task64, queries64):
    for name in ("zs-lp", "clap"):
        a = methods.create(name, epochs=3, batch_size=8).fit(task64)
        b = methods.create(name, epochs=3, batch_size=8).fit(task64.without_val())
        assert torch.equal(a.logits(queries64), b.logits(queries64))


def test_zs_lp_bad_input(task64):
    for kw, msg in [
        ({"epochs": -2}, "epochs: expected a non-negative integer"),
        ({"batch_size": 0}, "batch_size: expected a positive integer"),
        ({"lr": -0.1}, "lr: expected a non-negative learning rate"),
        ({"init_norm": 0.0}, "init_norm: expected a positive norm"),
    ]:
        for name in ("zs-lp", "clap"):
            with pytest.raises(ValueError, match=msg):
                methods.create(name, **kw).fit(task64)
