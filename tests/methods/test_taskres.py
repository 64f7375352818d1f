"""TaskRes: the zero-residual limit, the logit formula, fitting separable data, the schedule."""

import pytest
import torch
from tests.methods._helpers import make_shuffled_task as make_task
from tests.methods._helpers import separable_world_task as _separable_world_task

from fewclip import functional as F
from fewclip import methods

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def task64():
    return make_task(c=4, shots=3, d=8, views=3, seed=2, dtype=torch.float64)


def test_taskres_zero_residual_is_zero_shot(task, queries):
    zs = methods.create("zero-shot").fit(task).logits(queries)
    torch.testing.assert_close(methods.create("taskres", epochs=0).fit(task).logits(queries), zs)
    torch.testing.assert_close(
        methods.create("taskres", alpha=0.0, epochs=5).fit(task).logits(queries), zs
    )


def test_taskres_logits_follow_the_formula(task64, queries64):
    m = methods.create("taskres", alpha=0.7, epochs=5, dtype="float64").fit(task64)
    assert torch.count_nonzero(m.residual_) > 0
    t = F.l2_normalize(task64.text_weights)
    expected = 100 * F.l2_normalize(queries64) @ F.l2_normalize(t + 0.7 * m.residual_).T
    torch.testing.assert_close(m.logits(queries64), expected, rtol=1e-12, atol=1e-12)


def test_taskres_fits_separable_data_that_zero_shot_gets_wrong():
    task = _separable_world_task()
    s = task.support
    assert methods.create("zero-shot").fit(task).score(s.features, s.labels) < 0.5
    m = methods.create("taskres", alpha=1.0, epochs=100, lr=1e-2).fit(task)
    assert m.score(s.features, s.labels) == 1.0
