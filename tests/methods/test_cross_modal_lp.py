"""The cross-modal linear probe: zero-shot limits, separable data, early stopping, search."""

import itertools

import pytest
import torch
from tests.methods._helpers import make_shuffled_task
from tests.methods._helpers import separable_world_task as _separable_world_task

from fewclip import functional as F
from fewclip import methods
from fewclip.methods._training import EndlessShuffle, warmup_cosine_lr

pytestmark = pytest.mark.usefixtures("one_thread")


def test_cross_modal_zero_iterations_and_full_wiseft_are_zero_shot(task, queries):
    zs = methods.create("zero-shot").fit(task).logits(queries)
    torch.testing.assert_close(
        methods.create("cross-modal-lp", iters=0).fit(task).logits(queries), zs
    )
    wise = methods.create("cross-modal-lp", iters=50, wiseft_ratio=1.0).fit(task)
    torch.testing.assert_close(wise.logits(queries), zs)
    half = methods.create("cross-modal-lp", iters=50, wiseft_ratio=0.5).fit(task)
    trained = methods.create("cross-modal-lp", iters=50).fit(task)
    torch.testing.assert_close(
        half.coef_, 0.5 * trained.coef_ + 0.5 * F.l2_normalize(task.text_weights)
    )


def test_cross_modal_fits_separable_data_and_stops_early():
    task = _separable_world_task()
    s = task.support
    assert methods.create("zero-shot").fit(task).score(s.features, s.labels) < 0.5
    m = methods.create("cross-modal-lp", iters=400).fit(task)
    assert m.score(s.features, s.labels) == 1.0
    assert m.best_iter_ == 400  # no val: the last iterate
    assert m.val_accuracy_ is None
    early = methods.create("cross-modal-lp", iters=400, eval_every=50)
    early.fit(_separable_world_task(val="fewshot"))
    assert early.best_iter_ % 50 == 0
    assert early.best_iter_ < 400
    assert early.val_accuracy_ is not None


def test_cross_modal_search_sweeps_on_validation():
    task = make_shuffled_task(seed=1)  # the best configuration is neither the first nor the last
    m = methods.create(
        "cross-modal-lp",
        iters=60,
        eval_every=20,
        search=True,
        search_lr=(1e-3, 1e-2),
        search_weight_decay=(0.0,),
        search_batch_size=(4, 8),
    ).fit(task)
    # each configuration trained on its own, in the sweep's order (lr outer, batch size inner)
    grid = list(itertools.product((1e-3, 1e-2), (4, 8)))
    best = []
    for lr, bs in grid:
        one = methods.create("cross-modal-lp", iters=60, eval_every=20, lr=lr, batch_size=bs)
        best.append(one.fit(task).val_accuracy_)
    assert best[2] == best[3]  # the first best is the third configuration
    assert best[1] < best[2]
    assert (m.lr_, m.batch_size_) == grid[best.index(max(best))]  # the first best
    assert m.weight_decay_ == 0.0
    assert m.val_accuracy_ == pytest.approx(max(best))
    assert methods.create("cross-modal-lp", search=True, iters=10).fit(task.without_val()).lr_ == (
        1e-3
    )


def test_cross_modal_lr_schedule():
    m = methods.create("cross-modal-lp")
    assert m._lr_at(0, 1e-3) == 1e-5
    assert m._lr_at(25, 1e-3) == pytest.approx(0.5e-3)
    assert m._lr_at(50, 1e-3) == pytest.approx(1e-3)
    assert m._lr_at(50 + 6400, 1e-3) == pytest.approx(0.5e-3)


def test_cross_modal_steps_match_a_plain_adamw_loop():
    """Without validation the head after the last iteration equals a plain loop: batches of
    images (the plain features and every view) and text embeddings from two endless shuffles
    of one generator, cross-entropy on scaled dot products, torch's AdamW with weight decay,
    linear warm-up then cosine per iteration."""
    task = make_shuffled_task(c=4, shots=3, d=8, views=2, seed=3, val=False, dtype=torch.float64)
    kw = {"iters": 9, "lr": 0.05, "weight_decay": 0.1, "batch_size": 6, "text_ratio": 0.5}
    kw |= {"warmup_iters": 2, "warmup_lr": 1e-3, "seed": 7, "scale": 20.0}
    m = methods.create("cross-modal-lp", dtype="float64", **kw).fit(task)
    s = task.support
    images = F.l2_normalize(torch.cat([s.features[None], s.views])).reshape(-1, 8)
    labels = s.labels.repeat(3)
    texts = F.l2_normalize(task.text_weights)
    w = torch.nn.Parameter(texts.clone())
    opt = torch.optim.AdamW([w], lr=1.0, weight_decay=0.1)
    g = torch.Generator().manual_seed(7)
    image_stream, text_stream = EndlessShuffle(len(labels), g), EndlessShuffle(4, g)
    for it in range(9):
        opt.param_groups[0]["lr"] = warmup_cosine_lr(
            it, lr=0.05, warmup_steps=2, warmup_lr=1e-3, total=9
        )
        ii, ti = image_stream.take(3), text_stream.take(3)
        x = torch.cat([images[ii], texts[ti]])
        y = torch.cat([labels[ii], ti])
        loss = torch.nn.functional.cross_entropy(20.0 * x @ w.T, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.testing.assert_close(m.coef_, w.detach(), rtol=1e-10, atol=1e-12)
    assert float((w.detach() - texts).norm()) > 0.01  # it moved
