"""LP++ against a numpy re-implementation of its initialisation, step sizes and updates."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from tests.methods._helpers import make_clustered_task as make_task
from tests.methods._helpers import np_unit as _np_normalise

from fewclip import functional as F
from fewclip import methods
from fewclip.methods.lp_pp import largest_eigenvalue
from fewclip.task import FeatureSet, Task


@pytest.fixture
def task64():
    return make_task(c=4, shots=5, d=8, views=3, seed=2, dtype=torch.float64)


def test_lp_pp_initialisation_and_step_sizes(task64):
    lp = methods.create("lp++", epochs=0, dtype="float64").fit(task64.without_val())
    x = _np_normalise(task64.support.features.numpy())
    y = task64.support.labels.numpy()
    t = _np_normalise(task64.text_weights.numpy())
    c = task64.n_classes
    np.testing.assert_allclose(lp.coef_.numpy(), np.stack([x[y == k].sum(0) for k in range(c)]))
    assert not lp.intercept_.any()
    # the released calculate_init_alpha: a one-hot mask keeps each class's own text column
    onehot = np.eye(c)[y]  # (N, C)
    alpha_tilde = (onehot * (x @ t.T) / onehot.sum(0, keepdims=True)).sum(0)  # (C,)
    np.testing.assert_allclose(lp.text_coef_.numpy(), np.full(c, 250 * alpha_tilde.mean()))
    every_pair = np.stack([(x[y == k] @ t.T).mean(0) for k in range(c)]).mean()
    assert abs(250 * every_pair - 250 * alpha_tilde.mean()) > 1e-3  # the old, wrong average
    n = len(x)
    assert lp.lr_w_ == pytest.approx(4 * n / np.linalg.eigvalsh(x.T @ x).max(), rel=1e-9)
    assert lp.lr_alpha_ == pytest.approx(n / (4 * ((x @ t.T) ** 2).sum(0).max()), rel=1e-12)
    wide = torch.randn(5, 40, dtype=torch.float64)  # N < D uses the smaller Gram matrix
    assert largest_eigenvalue(wide) == pytest.approx(np.linalg.eigvalsh(wide.T @ wide).max())


def _np_lp_pp(task, epochs):
    """LP++ in numpy: the (W, b, α) after each of ``epochs`` epochs (entry 0: the start).
    Full-batch momentum steps on (W, b), an α step every 10 epochs."""
    x = _np_normalise(task.support.features.numpy())
    y = task.support.labels.numpy()
    t = _np_normalise(task.text_weights.numpy())
    c, n = task.n_classes, len(x)
    onehot = np.eye(c)[y]
    z = x @ t.T
    w = onehot.T @ x
    b = np.zeros(c)
    a = np.full(c, 250 * np.mean([(x[y == k] @ t[k]).mean() for k in range(c)]))
    lr_w = 4 * n / np.linalg.eigvalsh(x.T @ x).max()
    lr_a = n / (4 * (z**2).sum(0).max())
    mw = mb = None
    states = [(w, b, a)]
    for epoch in range(1, epochs + 1):
        logits = x @ w.T + b + z * a
        p = np.exp(logits - logits.max(1, keepdims=True))
        g = (p / p.sum(1, keepdims=True) - onehot) / n
        gw, gb = g.T @ x, g.sum(0)
        if epoch % 10 == 0:
            a = a - lr_a * (g * z).sum(0)
        mw = gw if mw is None else 0.9 * mw + gw
        mb = gb if mb is None else 0.9 * mb + gb
        w, b = w - lr_w * mw, b - lr_w * mb
        states.append((w, b, a))
    return states


def test_lp_pp_updates_follow_the_block_mm_rule(task64):
    """12 epochs against a numpy re-implementation: momentum steps on (W, b), α every 10."""
    lp = methods.create("lp++", epochs=12, dtype="float64").fit(task64.without_val())
    w, b, a = _np_lp_pp(task64, 12)[-1]
    np.testing.assert_allclose(lp.coef_.numpy(), w, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(lp.intercept_.numpy(), b, atol=1e-9)
    np.testing.assert_allclose(lp.text_coef_.numpy(), a, rtol=1e-12)
    assert lp.best_epoch_ == 12
    assert lp.val_accuracy_ is None


def test_lp_pp_reaches_the_logistic_regression_optimum():
    """W·f + b + α∘(T·f) spans the same functions as multinomial LR on f: on non-separable data
    the minimiser's probabilities are those of unpenalised logistic regression."""
    g = torch.Generator().manual_seed(0)
    means = torch.randn(3, 6, generator=g, dtype=torch.float64)
    y = torch.arange(3).repeat_interleave(60)
    x = means[y] + 1.5 * torch.randn(len(y), 6, generator=g, dtype=torch.float64)
    text = F.l2_normalize(means + torch.randn(3, 6, generator=g, dtype=torch.float64))
    task = Task(["a", "b", "c"], text, FeatureSet(x, y))
    lp = methods.create("lp++", epochs=300, dtype="float64").fit(task)
    sk = LogisticRegression(C=np.inf, tol=1e-12, max_iter=100_000)
    sk.fit(F.l2_normalize(x).numpy(), y.numpy())
    proba = sk.predict_proba(F.l2_normalize(x).numpy())
    np.testing.assert_allclose(lp.predict_proba(x).numpy(), proba, atol=1e-5)


@pytest.mark.parametrize(
    ("seed", "expected"),
    [
        (2, 30),  # 100% at epochs 1-7 and again from 11 on: the latest best is the last epoch
        (7, 5),  # the best (87.5%) only at epochs 4 and 5
    ],
)
def test_lp_pp_keeps_the_best_validation_epoch(seed, expected):
    task = make_task(c=4, shots=5, d=8, views=3, seed=seed, dtype=torch.float64)
    lp = methods.create("lp++", epochs=30, dtype="float64").fit(task)
    # validation accuracy after every epoch of the numpy re-implementation; ties: the latest
    states = _np_lp_pp(task, 30)
    xv = _np_normalise(task.val.features.numpy())
    zv = xv @ _np_normalise(task.text_weights.numpy()).T
    yv = task.val.labels.numpy()
    accs = [100.0 * float(((xv @ w.T + b + zv * a).argmax(1) == yv).mean()) for w, b, a in states]
    best = max(range(1, 31), key=lambda e: (accs[e], e))
    assert best == expected
    assert lp.best_epoch_ == best
    assert lp.val_accuracy_ == pytest.approx(accs[best])
    w, b, a = states[best]  # the kept weights are those of that epoch
    np.testing.assert_allclose(lp.coef_.numpy(), w, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(lp.intercept_.numpy(), b, atol=1e-9)
    np.testing.assert_allclose(lp.text_coef_.numpy(), a, rtol=1e-12)
    assert lp.val_accuracy_ == pytest.approx(100 * lp.score(task.val.features, task.val.labels))
    zero = methods.create("lp++", epochs=0, dtype="float64").fit(task)
    assert zero.best_epoch_ == 0
    assert zero.val_accuracy_ == pytest.approx(accs[0])


def test_lp_pp_bad_input(task64):
    for kw, msg in [
        ({"epochs": -1}, "epochs: expected a non-negative integer"),
        ({"alpha_every": 0}, "alpha_every: expected a positive integer"),
        ({"momentum": 1.0}, r"momentum: expected a value in \[0, 1\)"),
    ]:
        with pytest.raises(ValueError, match=msg):
            methods.create("lp++", **kw).fit(task64)
