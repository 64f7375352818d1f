"""TaskRes: when it trains (a single epoch does; nothing to train shows no progress bar),
and the dtypes it trains and stores in (float16 state, features of another precision)."""

import pytest
import torch
from tests.methods._helpers import make_shuffled_task, one_view_task

from fewclip import functional as F
from fewclip import methods
from fewclip.task import FeatureSet, Task

pytestmark = pytest.mark.usefixtures("one_thread")


def test_taskres_single_epoch_is_one_adam_step():
    """One epoch over 20 images in one batch of 256 is one full-batch Adam step from a zero
    residual, at the full rate without warm-up: Adam's first step moves each entry by
    lr·g/(|g| + 1e-8), g the gradient of the cross-entropy at the zero-shot classifier."""
    task = one_view_task(0)
    kw = {"alpha": 0.5, "epochs": 1, "lr": 0.01, "warmup_epochs": 0, "scale": 30.0}
    m = methods.create("taskres", dtype="float64", **kw).fit(task)
    t = F.l2_normalize(task.text_weights)
    r = torch.zeros_like(t, requires_grad=True)
    x = F.l2_normalize(task.support.features)
    logits = 30.0 * x @ F.l2_normalize(t + 0.5 * r).T
    torch.nn.functional.cross_entropy(logits, task.support.labels).backward()
    g = r.grad
    expected = -0.01 * g / (g.abs() + 1e-8)
    torch.testing.assert_close(m.residual_, expected, rtol=1e-6, atol=1e-12)
    assert float(m.residual_.abs().max()) > 0.009  # it moved by about lr


@pytest.mark.parametrize(
    "params",
    [{"epochs": 0, "alpha": 0.5}, {"epochs": 2, "alpha": 0.0}],
    ids=["epochs=0", "alpha=0"],
)
def test_taskres_with_nothing_to_train_shows_no_progress_bar(task, capfd, params):
    """No epochs, or a residual that cannot act (α = 0): the fit skips training, so even
    with ``progress=True`` nothing is printed, and the residual stays zero."""
    m = methods.create("taskres", progress=True, **params).fit(task)
    assert capfd.readouterr().err == ""
    assert torch.count_nonzero(m.residual_) == 0


def test_float16_taskres_trains_in_float32_and_stores_float16():
    """A float16 TaskRes trains in float32 (from its float16 text weights) and stores its
    residual in float16, like its text weights."""
    task = make_shuffled_task(c=4, shots=3, d=8, views=2, seed=1)
    kw = {"alpha": 0.7, "epochs": 3, "lr": 0.05, "seed": 2}
    half = methods.create("taskres", dtype="float16", **kw).fit(task)
    assert half.residual_.dtype == torch.float16
    assert half.text_weights_.dtype == torch.float16
    full = methods.create("taskres", dtype="float32", **kw).fit(task)
    assert float(full.residual_.abs().max()) > 0.01
    torch.testing.assert_close(half.residual_.float(), full.residual_, rtol=0, atol=2e-3)


def test_float64_taskres_on_float32_features_is_the_fit_on_their_float64_copy():
    """Features of another precision are cast to the method's: a float64 TaskRes fitted on a
    float32 task equals the one fitted on the float64 copy of that task."""
    t32 = make_shuffled_task(c=4, shots=3, d=8, views=2, seed=3)
    s = t32.support
    support64 = FeatureSet(s.features.double(), s.labels, s.views.double())
    t64 = Task(t32.classnames, t32.text_weights.double(), support64)
    kw = {"alpha": 0.7, "epochs": 3, "lr": 0.05, "dtype": "float64"}
    a = methods.create("taskres", **kw).fit(t32)
    b = methods.create("taskres", **kw).fit(t64)
    assert a.residual_.dtype == torch.float64
    assert float(b.residual_.abs().max()) > 0.01
    torch.testing.assert_close(a.residual_, b.residual_, rtol=0, atol=0)
