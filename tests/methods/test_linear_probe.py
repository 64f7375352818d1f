"""The linear probe against scikit-learn's logistic regression, and its C sweep on validation."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from fewclip import functional as F
from fewclip import methods
from fewclip.task import FeatureSet, Task
from fewclip.testing import SyntheticWorld


@pytest.mark.parametrize("C", [0.5, 10.0, 200.0])
def test_linear_probe_matches_sklearn(C):
    world = SyntheticWorld(10, 64, seed=3, test_size=1000)
    task = world.task(8, seed=1, views=1, val="none")
    test = world.test_set()
    lp = methods.create("linear-probe", C=C).fit(task)
    x = F.l2_normalize(task.support.features).double().numpy()
    sk = LogisticRegression(C=C, max_iter=5000, tol=1e-8).fit(x, task.support.labels.numpy())
    xt = F.l2_normalize(test.features).double().numpy()
    sk_acc = float((sk.predict(xt) == test.labels.numpy()).mean())
    ours = lp.score(test.features, test.labels)
    assert abs(ours - sk_acc) <= 0.005
    np.testing.assert_allclose(
        lp.coef_.double().numpy(), sk.coef_, atol=0.05 * np.abs(sk.coef_).max()
    )


def test_linear_probe_sweeps_on_validation():
    world = SyntheticWorld(8, 32, seed=1)
    task = world.task(4, seed=3)
    grid = (0.01, 1.0, 100.0)
    lp = methods.create("linear-probe", Cs=grid).fit(task)
    # each C fitted on its own (no sweep, no warm start), scored on the validation set
    xv, yv = task.val.features, task.val.labels
    val = [100.0 * methods.create("linear-probe", C=c).fit(task).score(xv, yv) for c in grid]
    # here the best is the middle point, tied with the last: picking either end is wrong
    assert val[1] == val[2]
    assert val[0] < val[1]
    assert grid.index(lp.C_) == val.index(max(val))  # the first C with the best val accuracy
    assert lp.val_accuracy_ == pytest.approx(max(val))
    assert methods.create("linear-probe").fit(task.without_val()).C_ == 10.0


def test_linear_probe_keeps_the_first_c_when_every_c_gets_nothing_right():
    """A validation set that every C gets wholly wrong (labels shifted by one class): all
    candidates tie at 0 %, and the first C of the sweep is kept, as the strict ``>`` does."""
    world = SyntheticWorld(4, 16, seed=2, sep=1.0)  # well separated: every C is perfect
    task = world.task(4, seed=1)
    shifted = FeatureSet(task.support.features, (task.support.labels + 1) % 4)
    lie = Task(task.classnames, task.text_weights, task.support, shifted)
    lp = methods.create("linear-probe", Cs=(3.0, 1.0, 30.0)).fit(lie)
    for c in (3.0, 1.0, 30.0):
        alone = methods.create("linear-probe", C=c).fit(lie)
        assert alone.score(shifted.features, shifted.labels) == 0.0
    assert lp.val_accuracy_ == 0.0
    assert lp.C_ == 1.0  # the sweep runs in ascending order


def test_linear_probe_use_views_trains_on_the_views_as_extra_images():
    world = SyntheticWorld(5, 16, seed=4)
    task = world.task(2, seed=1, views=3, val="none")
    s = task.support
    assert s.views is not None
    pooled = FeatureSet(torch.cat([s.features, *s.views]), s.labels.repeat(1 + s.n_views))
    flat = Task(task.classnames, task.text_weights, pooled)
    with_views = methods.create("linear-probe", C=2.0, use_views=True).fit(task)
    by_hand = methods.create("linear-probe", C=2.0).fit(flat)
    torch.testing.assert_close(with_views.coef_, by_hand.coef_)
    plain = methods.create("linear-probe", C=2.0).fit(task)
    assert not torch.allclose(plain.coef_, by_hand.coef_, atol=1e-3)
