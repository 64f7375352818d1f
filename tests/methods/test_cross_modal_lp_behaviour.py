"""Cross-modal linear probe behaviour: which batch sizes are checked, compute and result
precision, a support set with more views than images, the reported validation accuracy, a
first iteration without warm-up against a hand-written AdamW step, and the epoch choice it
reports to the conformance suite (``_epoch_selection``)."""

import re

import pytest
import torch
from tests.methods._helpers import make_clustered_task

from fewclip import methods
from fewclip.task import FeatureSet, Task

pytestmark = pytest.mark.usefixtures("one_thread")


def _unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def _cast(task, dtype):
    s, v = task.support, task.val
    return Task(
        task.classnames,
        task.text_weights.to(dtype),
        FeatureSet(s.features.to(dtype), s.labels, s.views.to(dtype)),
        None if v is None else FeatureSet(v.features.to(dtype), v.labels),
    )


# -- hyper-parameters -----------------------------------------------------------------------------
def test_search_batch_sizes_are_checked_only_with_search(task):
    """search=False trains with batch_size alone: a search_batch_size of 1 is not used, so
    not rejected; with search=True it is, with every size listed."""
    m = methods.create("cross-modal-lp", search_batch_size=(1,), iters=3).fit(task)
    assert m.batch_size_ == 32
    message = "batch_size: expected at least 2 (images and texts), found [32, 1]"
    with pytest.raises(ValueError, match=re.escape(message)):
        methods.create("cross-modal-lp", search=True, search_batch_size=(1,), iters=3).fit(task)


# -- precision ------------------------------------------------------------------------------------
@pytest.mark.parametrize("val", [False, True])
def test_float16_task_fits_like_its_exact_float32_cast(val):
    """Images, text weights and validation features of a float16 task are cast to float32
    before any arithmetic (the cast is exact): the same fit as the task cast beforehand."""
    t16 = _cast(make_clustered_task(c=3, shots=2, d=8, views=2, val=val), torch.float16)
    t32 = _cast(t16, torch.float32)
    kw = {"iters": 20, "warmup_iters": 2, "lr": 1e-2, "eval_every": 5}
    a = methods.create("cross-modal-lp", **kw).fit(t16)
    b = methods.create("cross-modal-lp", **kw).fit(t32)
    assert a.coef_.dtype == torch.float32
    torch.testing.assert_close(a.coef_, b.coef_, rtol=0, atol=1e-6)
    assert (a.best_iter_, a.val_accuracy_) == (b.best_iter_, b.val_accuracy_)


def test_float16_results_are_float16(task):
    """dtype="float16" trains in float32 and stores the head and the zero-shot head in float16."""
    m = methods.create("cross-modal-lp", iters=10, dtype="float16").fit(task)
    full = methods.create("cross-modal-lp", iters=10).fit(task)
    assert m.coef_.dtype == torch.float16
    assert m.zero_shot_.dtype == torch.float16
    torch.testing.assert_close(m.zero_shot_, _unit(task.text_weights).half())
    torch.testing.assert_close(m.coef_.float(), full.coef_, rtol=1e-3, atol=1e-3)


# -- training -------------------------------------------------------------------------------------
def test_more_stored_views_than_images():
    """2 images with 4 views each: every one of the 10 image samples (plain and views) keeps
    its image's label; trained on images only, the head classifies each of them."""
    task = make_clustered_task(c=2, shots=1, d=8, views=4, val=False)
    m = methods.create("cross-modal-lp", iters=60, lr=0.05, text_ratio=0.0, batch_size=4)
    m.fit(task)
    s = task.support
    assert torch.equal(m.predict(s.features), s.labels)
    for view in s.views:
        assert torch.equal(m.predict(view), s.labels)


def test_val_accuracy_is_the_kept_heads_accuracy_in_percent(task):
    m = methods.create("cross-modal-lp", iters=30, eval_every=10, lr=1e-2).fit(task)
    v = task.val
    right = int((torch.argmax(_unit(v.features) @ m.coef_.T, dim=1) == v.labels).sum())
    assert right > 0
    assert m.val_accuracy_ == pytest.approx(100.0 * right / len(v.labels), abs=1e-9)


def test_first_iteration_without_warmup_is_a_full_rate_adamw_step():
    """warmup_iters=0: the first iteration runs at lr·½(1 + cos 0) = lr. A batch of 4 images
    and 2 texts is exactly one pass over each, so the step is AdamW's first:
    W₁ = W₀·(1 − lr·wd) − lr·g/(|g| + 1e-8), g the gradient of the mean cross-entropy."""
    g = torch.Generator().manual_seed(5)
    text = _unit(torch.randn(2, 4, generator=g, dtype=torch.float64))
    y = torch.tensor([0, 0, 1, 1])
    x = text[y] + 0.5 * torch.randn(4, 4, generator=g, dtype=torch.float64)
    task = Task(["a", "b"], text, FeatureSet(x, y))
    kw = {"iters": 1, "warmup_iters": 0, "lr": 0.01, "weight_decay": 0.1, "batch_size": 6}
    m = methods.create("cross-modal-lp", text_ratio=1 / 3, dtype="float64", **kw).fit(task)
    w = text.clone().requires_grad_(True)
    samples, labels = torch.cat([_unit(x), text]), torch.cat([y, torch.arange(2)])
    torch.nn.functional.cross_entropy(100.0 * samples @ w.T, labels).backward()
    grad = w.grad
    expected = text * (1 - 0.01 * 0.1) - 0.01 * grad / (grad.abs() + 1e-8)
    torch.testing.assert_close(m.coef_, expected, rtol=1e-9, atol=1e-12)


# -- the epoch choice reported to the conformance suite -------------------------------------------
def test_epoch_selection_with_validation(task):
    """(history, kept iteration, "first", final): final says the fitted head is the kept
    iterate as it is, true without WiSE-FT; then its validation accuracy is the recorded one."""
    m = methods.create("cross-modal-lp", iters=30, eval_every=10, lr=1e-2).fit(task)
    history, chosen, ties, final = m._epoch_selection()
    assert [it for it, _ in history] == [0, 10, 20]
    assert chosen == m.best_iter_
    assert ties == "first"
    assert final is True
    best = max(acc for _, acc in history)
    right = int((m.predict(task.val.features) == task.val.labels).sum())
    assert right / len(task.val.labels) == pytest.approx(best, abs=1e-9)
    for ratio in (0.5, 1.0):
        wise = methods.create(
            "cross-modal-lp", iters=30, eval_every=10, lr=1e-2, wiseft_ratio=ratio
        ).fit(task)
        assert wise._epoch_selection()[3] is False


def test_epoch_selection_after_a_single_iteration(task):
    m = methods.create("cross-modal-lp", iters=1).fit(task)
    history, chosen, _, final = m._epoch_selection()
    assert [it for it, _ in history] == [0]
    assert chosen == 0
    assert final is True


def test_no_epoch_selection_without_validation_or_after_loading(task, tmp_path):
    """Nothing was chosen on validation without a validation set or without iterations, and a
    loaded probe has no validation history to report."""
    no_val = methods.create("cross-modal-lp", iters=20).fit(task.without_val())
    assert no_val._epoch_selection() is None
    assert methods.create("cross-modal-lp", iters=0).fit(task)._epoch_selection() is None
    fitted = methods.create("cross-modal-lp", iters=20, eval_every=5).fit(task)
    assert fitted._epoch_selection() is not None
    fitted.save(tmp_path / "cmlp")
    loaded = methods.load(tmp_path / "cmlp")
    assert loaded._epoch_selection() is None
    assert torch.equal(loaded.coef_, fitted.coef_)


# -- learning-rate checks -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "params", [{"warmup_lr": -1e-5}, {"lr": -1e-3, "warmup_iters": 0}], ids=["warmup", "lr"]
)
def test_negative_first_learning_rate_is_refused(task, params):
    """The first iteration's rate (warmup_lr, or lr without warm-up) goes to the optimiser,
    which refuses a negative one before any step."""
    with pytest.raises(ValueError, match="learning rate"):
        methods.create("cross-modal-lp", iters=3, **params).fit(task)


def test_negative_learning_rate_is_refused_with_a_warmup(task):
    with pytest.raises(ValueError, match="learning rate"):
        methods.create("cross-modal-lp", lr=-1e-3, iters=60).fit(task)
