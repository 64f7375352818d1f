"""TaskRes: the zero-residual limit, the logit formula, fitting separable data, the schedule."""

import pytest
import torch
from tests.methods._helpers import make_shuffled_task as make_task
from tests.methods._helpers import separable_world_task as _separable_world_task

from fewclip import functional as F
from fewclip import methods
from fewclip.methods._training import dassl_epoch, dassl_lr

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


def test_taskres_steps_match_a_plain_adam_loop(task64):
    """The residual after training equals a plain loop written from the paper's definition:
    cosine logits against l2_normalize(t + α·r), cross-entropy, torch's Adam with weight decay,
    Dassl's learning rate per epoch and Dassl's batches (one random view per image)."""
    kw = {"alpha": 0.7, "epochs": 3, "lr": 0.05, "weight_decay": 0.01, "batch_size": 4}
    kw |= {"warmup_epochs": 1, "warmup_lr": 1e-3, "seed": 5, "scale": 30.0}
    m = methods.create("taskres", dtype="float64", **kw).fit(task64)
    t = 1.0 * F.l2_normalize(task64.text_weights)
    bank, y = task64.support.view_bank(), task64.support.labels
    r = torch.nn.Parameter(torch.zeros_like(t))
    opt = torch.optim.Adam([r], lr=0.05, weight_decay=0.01)
    g = torch.Generator().manual_seed(5)
    for epoch in range(3):
        opt.param_groups[0]["lr"] = dassl_lr(
            epoch, lr=0.05, epochs=3, warmup_epochs=1, warmup_lr=1e-3
        )
        ep = dassl_epoch(len(y), bank.shape[0], 4, g)
        assert len(ep.batches) == 3  # 12 images, batches of 4
        for batch in ep.batches:
            idx = ep.order[batch]
            x = F.l2_normalize(bank[ep.view_of[idx], idx])
            logits = 30.0 * x @ F.l2_normalize(t + 0.7 * r).T
            loss = torch.nn.functional.cross_entropy(logits, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert epoch == 2
    torch.testing.assert_close(m.residual_, r.detach(), rtol=1e-10, atol=1e-12)
    assert float(r.detach().norm()) > 0.01  # it moved: the comparison is not of two zeros
