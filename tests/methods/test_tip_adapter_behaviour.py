"""Tip-Adapter and Tip-Adapter-F behaviour beyond tests/methods/test_tip_adapter.py.

- ``prototype_keys``: each prototype is the normalised mean of one group of a partition of its
  class's shots, and the grouping depends on ``seed`` only (not on torch's global generator);
- the (β, α) search: ``search_scale`` reaches the grid, and the grid reported to the
  conformance suite (``_selection``) is the documented one;
- Tip-Adapter-F: every constructor argument is kept and takes effect, ``epochs=0`` and
  ``epochs=1``, ``weight_decay`` reaching AdamW (against a plain AdamW loop), and the epoch
  choice reported to the conformance suite (``_epoch_selection``) against that loop's keys;
- float16 Tip-Adapter-F keys stay near the float64 keys (its AdamW once kept a float16 second
  moment that underflowed, making each step ~10x too large).
"""

import itertools

import pytest
import torch
from tests.methods._helpers import make_shuffled_task, one_view_task

from fewclip import functional as F
from fewclip import methods
from fewclip.methods.tip_adapter import prototype_keys


@pytest.fixture
def task():
    return make_shuffled_task(c=4, shots=4, d=8, views=2, seed=3)


def _grid(s, n):
    """One axis of the reference grid, ``0.1 + i·(S − 0.1)/n`` for i = 0 … n − 1."""
    return [0.1 + i * (s - 0.1) / n for i in range(n)]


# -- prototype_keys -------------------------------------------------------------------------------
def test_prototypes_are_means_of_a_partition_of_each_class(task):
    """2 prototypes of a class of 4 shots: the normalised means of two disjoint pairs."""
    keys = F.cache_keys(task.support.views)
    labels = task.support.labels
    out, out_labels = prototype_keys(keys, labels, task.n_classes, 2, seed=5)
    assert out_labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert out_labels.dtype == torch.int64
    for c in range(task.n_classes):
        own = torch.nonzero(labels == c).flatten().tolist()
        found = []
        for pair in itertools.combinations(own, 2):
            mean = keys[list(pair)].mean(0)
            for k in (0, 1):
                if torch.allclose(out[2 * c + k], mean / mean.norm(), atol=1e-6):
                    found.append((k, set(pair)))
        assert sorted(k for k, _ in found) == [0, 1], c
        assert found[0][1] | found[1][1] == set(own)


def test_prototype_grouping_depends_on_the_seed_only(task):
    keys = F.cache_keys(task.support.views)
    labels = task.support.labels
    with torch.random.fork_rng():
        draws = []
        for global_seed in (0, 1, 2):
            torch.manual_seed(global_seed)
            draws.append(prototype_keys(keys, labels, task.n_classes, 2, seed=5)[0])
    assert all(torch.equal(d, draws[0]) for d in draws)
    others = [prototype_keys(keys, labels, task.n_classes, 2, seed=s)[0] for s in (6, 7, 8)]
    assert not all(torch.equal(o, draws[0]) for o in others)


# -- the (β, α) search ----------------------------------------------------------------------------
def test_search_scale_reaches_the_grid(task):
    """The pick is the first best point of a brute-force sweep of the grid with upper ends
    (S_β, S_α) = (2, 5), not the default (7, 3)."""
    tip = methods.create("tip-adapter", search_scale=(2.0, 5.0), search_step=(6, 4)).fit(task)
    keys = F.cache_keys(task.support.views)
    w = F.l2_normalize(task.text_weights)
    onehot = torch.nn.functional.one_hot(task.support.labels, task.n_classes).float()
    x = F.l2_normalize(task.val.features)
    grid = [(b, a) for b in _grid(2.0, 6) for a in _grid(5.0, 4)]
    right = []
    for b, a in grid:
        logits = 100 * x @ w.T + a * torch.exp(-b * (1 - x @ keys.T)) @ onehot
        right.append(int((logits.argmax(1) == task.val.labels).sum()))
    assert (tip.beta_, tip.alpha_) == grid[right.index(max(right))]
    assert tip.val_accuracy_ == pytest.approx(100 * max(right) / task.val.n)
    assert tip.beta_ < 2.0
    assert max(right) != min(right)  # the grid points are not all alike


def test_selection_reports_the_documented_grid(task):
    tip = methods.create("tip-adapter", search_scale=(2.0, 5.0), search_step=(3, 2)).fit(task)
    candidates, chosen = tip._selection()
    assert candidates == [
        {"search": False, "beta": b, "alpha": a} for b in _grid(2.0, 3) for a in _grid(5.0, 2)
    ]
    assert chosen == {"search": False, "beta": tip.beta_, "alpha": tip.alpha_}
    assert chosen in candidates


def test_no_selection_without_a_search(task):
    no_val = methods.create("tip-adapter", search_step=(3, 2)).fit(task.without_val())
    assert no_val._selection() is None
    fixed = methods.create("tip-adapter", search=False).fit(task)
    assert fixed._selection() is None


# -- Tip-Adapter-F: constructor arguments ---------------------------------------------------------
def test_tip_f_keeps_every_constructor_argument():
    given = {
        "alpha": 2.5,
        "beta": 3.5,
        "search": False,
        "search_scale": (4.0, 2.0),
        "search_step": (7, 3),
        "scale": 50.0,
        "prototypes": 2,
        "epochs": 3,
        "lr": 5e-3,
        "eps": 1e-5,
        "weight_decay": 0.2,
        "batch_size": 8,
        "seed": 9,
        "dtype": "float64",
        "device": "cpu:0",
        "progress": True,
    }
    assert methods.create("tip-adapter-f", **given).get_params() == given


def test_tip_f_prototypes_search_and_scale_take_effect(task):
    x = task.val.features
    m = methods.create(
        "tip-adapter-f", epochs=0, prototypes=1, search=False, alpha=2.0, beta=3.0, scale=7.0
    ).fit(task)
    assert m.keys_.shape == (task.n_classes, task.dim)  # one prototype a class
    assert (m.alpha_, m.beta_, m.val_accuracy_) == (2.0, 3.0, None)  # no search on task.val
    keys = F.cache_keys(task.support.views)
    protos = torch.stack([keys[task.support.labels == c].mean(0) for c in range(4)])
    protos = F.l2_normalize(protos)
    xn, w = F.l2_normalize(x), F.l2_normalize(task.text_weights)
    expected = 7.0 * xn @ w.T + 2.0 * torch.exp(-3.0 * (1 - xn @ protos.T))
    torch.testing.assert_close(m.logits(x), expected, rtol=1e-5, atol=1e-5)


def test_tip_f_seed_shuffles_the_training(task):
    """Batches of 4 of the 16 images, one of 2 stored views each: the seed decides both."""

    def keys(seed):
        m = methods.create("tip-adapter-f", epochs=2, batch_size=4, search=False, seed=seed)
        return m.fit(task.without_val()).keys_

    assert torch.equal(keys(1), keys(1))
    assert not torch.equal(keys(5), keys(1))


# -- Tip-Adapter-F: training ----------------------------------------------------------------------
def _plain_tip_f(task, epochs, *, lr, beta, alpha, scale=100.0, weight_decay=0.01):
    """Full-batch Tip-F on a one-view task (tests.methods._helpers.one_view_task): the Tip logits
    with trainable keys, cross-entropy, torch's unfused AdamW (eps 1e-4) and a cosine schedule
    stepped once an epoch. Returns the keys after each epoch."""
    feats = task.support.views[0]
    x = feats / feats.norm(dim=1, keepdim=True)
    w = task.text_weights / task.text_weights.norm(dim=1, keepdim=True)
    y = task.support.labels
    keys = torch.nn.Parameter(x.clone())
    onehot = torch.nn.functional.one_hot(y, task.n_classes).double()
    opt = torch.optim.AdamW(
        [keys], lr=lr, eps=1e-4, weight_decay=weight_decay, foreach=False, fused=False
    )
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    after = []
    for _ in range(epochs):
        logits = scale * x @ w.T + alpha * torch.exp(-beta * (1 - x @ keys.T)) @ onehot
        loss = torch.nn.functional.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        after.append(keys.detach().clone())
    return after


def test_tip_f_with_zero_epochs_is_untrained(task):
    m = methods.create("tip-adapter-f", epochs=0, search=False).fit(task)
    assert m.best_epoch_ == 0
    order = torch.argsort(task.support.labels, stable=True)
    torch.testing.assert_close(m.keys_, F.cache_keys(task.support.views)[order])
    assert m._epoch_selection() is None


def test_tip_f_with_one_epoch_trains_one_step():
    task = one_view_task(1, val=False)
    kw = {"lr": 1e-2, "beta": 2.0, "alpha": 1.5}
    m = methods.create("tip-adapter-f", epochs=1, batch_size=64, dtype="float64", **kw)
    m.fit(task)
    (keys,) = _plain_tip_f(task, 1, **kw)
    assert m.best_epoch_ == 1
    assert not torch.allclose(keys, F.l2_normalize(task.support.features))  # the keys moved
    torch.testing.assert_close(m.keys_, keys, rtol=0, atol=5e-6)  # float32 loss


@pytest.mark.parametrize("weight_decay", [0.0, 0.5])
def test_tip_f_weight_decay_reaches_adamw(weight_decay):
    task = one_view_task(2, val=False)
    kw = {"lr": 1e-2, "beta": 2.0, "alpha": 1.5, "weight_decay": weight_decay}
    m = methods.create("tip-adapter-f", epochs=3, batch_size=64, dtype="float64", **kw)
    m.fit(task)
    keys = _plain_tip_f(task, 3, **kw)[-1]
    torch.testing.assert_close(m.keys_, keys, rtol=0, atol=5e-6)  # float32 loss
    default = _plain_tip_f(task, 3, **{**kw, "weight_decay": 0.01})[-1]
    assert not torch.allclose(keys, default, rtol=0, atol=5e-5)  # the setting mattered


@pytest.mark.parametrize("scale", [100.0, 1.0])
def test_tip_f_epoch_selection_reports_validation_accuracy_per_epoch(scale):
    """``(history, chosen, ties, final)``: each epoch with its validation accuracy in [0, 1]
    (scored with the method's own logit scale), the kept epoch, the first of equal ones, and
    not final (the (β, α) search runs after it)."""
    task = one_view_task(4)
    kw = {"lr": 5e-2, "beta": 2.0, "alpha": 3.0, "scale": scale}
    m = methods.create("tip-adapter-f", epochs=6, batch_size=64, dtype="float64", **kw)
    m.fit(task)
    xv, yv = F.l2_normalize(task.val.features), task.val.labels
    w = F.l2_normalize(task.text_weights)
    onehot = torch.nn.functional.one_hot(task.support.labels, task.n_classes).double()
    accs = []
    for keys in _plain_tip_f(task, 6, **kw):
        logits = scale * xv @ w.T + 3.0 * torch.exp(-2.0 * (1 - xv @ keys.T)) @ onehot
        accs.append(int((logits.argmax(1) == yv).sum()) / len(yv))
    history, chosen, ties, final = m._epoch_selection()
    assert history == [(e, pytest.approx(a, abs=1e-12)) for e, a in enumerate(accs, 1)]
    assert chosen == m.best_epoch_ == accs.index(max(accs)) + 1
    assert (ties, final) == ("first", False)


def test_tip_f_epoch_selection_needs_a_fit_with_validation(tmp_path):
    task = one_view_task(3)
    assert methods.create("tip-adapter-f")._epoch_selection() is None  # not fitted
    no_val = methods.create("tip-adapter-f", epochs=2, search=False).fit(task.without_val())
    assert no_val._epoch_selection() is None
    fitted = methods.create("tip-adapter-f", epochs=2, search_step=(3, 2)).fit(task)
    loaded = methods.load(fitted.save(tmp_path / "tipf"))  # the history is not saved
    assert loaded._epoch_selection() is None


# -- float16 --------------------------------------------------------------------------------------
def test_float16_tip_f_keys_stay_near_the_float64_keys(task):
    kw = {"epochs": 5, "search": False, "lr": 1e-2, "alpha": 2.0, "beta": 3.0}
    k64 = methods.create("tip-adapter-f", dtype="float64", **kw).fit(task).keys_
    k16 = methods.create("tip-adapter-f", dtype="float16", **kw).fit(task).keys_
    start = F.cache_keys(task.support.views.double())[
        torch.argsort(task.support.labels, stable=True)
    ]
    moved = float((k64 - start).abs().max())
    assert moved > 5e-3  # the float64 keys moved by about 1e-2
    # float16 keeps about 3 significant digits: keys of norm ~1 round by ~5e-4
    torch.testing.assert_close(k16.double(), k64, rtol=0, atol=2e-3)
