"""GDA against an independent numpy computation of its statistics and its alpha search."""

import numpy as np
import pytest
import torch
from sklearn.covariance import ledoit_wolf, oas
from tests.methods._helpers import make_clustered_task as make_task
from tests.methods._helpers import np_unit as _np_normalise

from fewclip import methods
from fewclip.task import FeatureSet, Task


@pytest.fixture
def task64():
    return make_task(c=4, shots=5, d=8, views=3, seed=2, dtype=torch.float64)


def _gda_reference(task, covariance="ks"):
    """GDA's statistics in numpy, as the released code computes them (torch ``.cov()``)."""
    views = _np_normalise(task.support.views.numpy())  # (V, N, D), each view normalised
    labels = task.support.labels.numpy()
    vecs = views.reshape(-1, views.shape[-1])
    y = np.tile(labels, views.shape[0])
    c, d = task.n_classes, vecs.shape[1]
    mus = np.stack([vecs[y == k].mean(0) for k in range(c)])
    centred = vecs - mus[y]
    if covariance == "ks":
        cov = np.cov(centred.T)  # subtracts the (≈ 0) global mean, divides by n − 1
        prec = d * np.linalg.pinv((len(vecs) - 1) * cov + np.trace(cov) * np.eye(d))
    elif covariance == "ledoit-wolf":
        prec = np.linalg.inv(ledoit_wolf(centred, assume_centered=True)[0])
    else:
        prec = np.linalg.inv(oas(centred, assume_centered=True)[0])
    w = mus @ prec
    b = np.log(1.0 / c) - 0.5 * np.einsum("kd,de,ke->k", mus, prec, mus)
    return w, b


@pytest.mark.parametrize("covariance", ["ks", "ledoit-wolf", "oas"])
def test_gda_matches_explicit_computation(task64, queries64, covariance):
    gda = methods.create("gda", alpha=0.7, covariance=covariance, dtype="float64").fit(task64)
    w, b = _gda_reference(task64, covariance)
    np.testing.assert_allclose(gda.coef_.numpy(), w, rtol=1e-9, atol=1e-9 * np.abs(w).max())
    np.testing.assert_allclose(gda.intercept_.numpy(), b, rtol=1e-9, atol=1e-9 * np.abs(b).max())
    x = _np_normalise(queries64.numpy())
    text = _np_normalise(task64.text_weights.numpy())
    expected = 100 * x @ text.T + 0.7 * (x @ w.T + b)
    np.testing.assert_allclose(gda.logits(queries64).numpy(), expected, rtol=1e-9, atol=1e-8)


def test_gda_alpha_search_follows_the_reference_loop(task64):
    alphas = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
    gda = methods.create("gda", dtype="float64").fit(task64)
    w, b = _gda_reference(task64)
    x = _np_normalise(task64.val.features.numpy())
    yv = task64.val.labels.numpy()
    zs = 100 * x @ _np_normalise(task64.text_weights.numpy()).T
    best_acc, best_alpha = 0.0, 0.1
    for a in alphas:
        acc = 100.0 * float(((zs + a * (x @ w.T + b)).argmax(1) == yv).mean())
        if acc > best_acc:
            best_acc, best_alpha = acc, a
    assert gda.alpha_ == best_alpha
    assert gda.val_accuracy_ == pytest.approx(best_acc)


def test_gda_alpha_without_validation_and_fixed(task64):
    assert methods.create("gda").fit(task64.without_val()).alpha_ == 0.1
    assert methods.create("gda", default_alpha=3.0).fit(task64.without_val()).alpha_ == 3.0
    fixed = methods.create("gda", alpha=2.5).fit(task64)
    assert fixed.alpha_ == 2.5
    assert fixed.val_accuracy_ is None


def test_gda_plain_features_when_asked_or_without_views(task64):
    s = task64.support
    no_views = Task(task64.classnames, task64.text_weights, FeatureSet(s.features, s.labels))
    a = methods.create("gda", alpha=1.0, dtype="float64").fit(no_views)
    b = methods.create("gda", alpha=1.0, dtype="float64", use_views=False).fit(task64)
    torch.testing.assert_close(a.coef_, b.coef_)
    c = methods.create("gda", alpha=1.0, dtype="float64").fit(task64)
    assert not torch.allclose(a.coef_, c.coef_)


def test_gda_bad_input(task64):
    with pytest.raises(ValueError, match="covariance: expected one of"):
        methods.create("gda", covariance="shrunk").fit(task64)
    with pytest.raises(ValueError, match="alphas: expected at least one value"):
        methods.create("gda", alphas=()).fit(task64)
