"""The linear probe against scikit-learn's logistic regression, and its C sweep on validation."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from fewclip import functional as F
from fewclip import methods
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
