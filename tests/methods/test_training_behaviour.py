"""The documented contracts of the shared training helpers (methods/_training.py) at their
edges, each against values worked out by hand: the training dtype, the per-step cosine's end
(also for one step in all), the warm-up-then-cosine rate without a warm-up and over a one-step
cosine, endless shuffling one item at a time, and KeepBest's default and empty state."""

from __future__ import annotations

import math

import pytest
import torch

from fewclip.methods._training import (
    EndlessShuffle,
    KeepBest,
    cosine_per_step,
    train_dtype,
    warmup_cosine_lr,
)

# -- the training dtype --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "trained"),
    [
        (torch.float16, torch.float32),
        (torch.float32, torch.float32),
        (torch.float64, torch.float64),
    ],
)
def test_half_and_single_precision_methods_train_in_float32(dtype, trained):
    assert train_dtype(dtype) is trained


# -- cosine_per_step -----------------------------------------------------------------------------


@pytest.mark.parametrize(("epochs", "steps"), [(2, 3), (3, 1), (1, 1)])
def test_the_per_step_cosine_spans_every_step_and_ends_at_zero(epochs, steps):
    """After optimiser step t of T = epochs · steps the rate is lr · ½ (1 + cos(π t / T)):
    the cosine covers all steps of training and reaches 0 after the last one."""
    lr, total = 0.4, epochs * steps
    param = torch.nn.Parameter(torch.zeros(1))
    optim = torch.optim.SGD([param], lr=lr)
    sched = cosine_per_step(optim, epochs=epochs, steps_per_epoch=steps)
    rates = []
    for _ in range(total):
        optim.step()
        sched.step()
        rates.append(optim.param_groups[0]["lr"])
    want = [0.5 * lr * (1 + math.cos(math.pi * t / total)) for t in range(1, total + 1)]
    assert rates == pytest.approx(want, abs=1e-12)
    assert rates[-1] == pytest.approx(0.0, abs=1e-12)


# -- warmup_cosine_lr ----------------------------------------------------------------------------


def test_without_a_warmup_the_first_step_runs_at_the_full_rate():
    got = [warmup_cosine_lr(s, lr=1e-3, warmup_steps=0, warmup_lr=1e-5, total=4) for s in range(5)]
    c = math.sqrt(0.5)  # cos(π/4)
    assert got == pytest.approx([1e-3, 0.5e-3 * (1 + c), 0.5e-3, 0.5e-3 * (1 - c), 0.0], abs=1e-15)


def test_a_one_step_cosine_reaches_zero_on_the_step_after_the_warmup():
    got = [warmup_cosine_lr(s, lr=1e-3, warmup_steps=2, warmup_lr=1e-5, total=1) for s in range(4)]
    assert got == pytest.approx([1e-5, 0.5e-3, 1e-3, 0.0], abs=1e-15)


# -- EndlessShuffle ------------------------------------------------------------------------------


def test_endless_shuffle_serves_one_item_at_a_time():
    stream = EndlessShuffle(3, torch.Generator().manual_seed(0))
    served = [stream.take(1) for _ in range(6)]
    assert all(part.shape == (1,) for part in served)
    flat = torch.cat(served).tolist()
    assert sorted(flat[:3]) == [0, 1, 2]
    assert sorted(flat[3:]) == [0, 1, 2]


def test_a_batch_larger_than_a_pass_wraps_into_the_next_pass():
    stream = EndlessShuffle(3, torch.Generator().manual_seed(1))
    first = stream.take(4).tolist()
    rest = stream.take(2).tolist()
    assert len(first) == 4
    assert sorted(first[:3]) == [0, 1, 2]
    assert sorted(first[3:] + rest) == [0, 1, 2]


# -- KeepBest ------------------------------------------------------------------------------------


def test_keep_best_keeps_the_earliest_of_equal_scores_by_default():
    best = KeepBest()
    assert best.ties == "first"
    for epoch, score in [(1, 0.5), (2, 0.8), (3, 0.8)]:
        best.offer(score, epoch, torch.full((2,), float(epoch)))
    assert best.epoch == 2
    assert best.state[0].tolist() == [2.0, 2.0]


def test_keep_best_before_any_offer_holds_nothing():
    best = KeepBest(ties="last")
    assert best.score == -math.inf
    assert best.epoch == 0
    assert best.state == ()
    assert best.history == []
