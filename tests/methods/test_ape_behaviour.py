"""APE and APE-T behaviour that tests/methods/test_ape.py leaves open.

Covers: the channel criterion when a class has no cache key; the bounds of the channel count
(one channel, a fraction that rounds to none); the (β, α, γ) grids when the axes have their
own scales and steps; the precision of a float64 search and the float32 search of a float64
task; ``val_accuracy_`` and the reported search without one; APE-T's constructor arguments,
its untrained and one-epoch fits, its half-precision state, its seeding, its validation
history per epoch, its (β, α) search on a strongly trained cache, and gradients through its
logits.
"""

import itertools

import numpy as np
import pytest
import torch
from tests.methods._helpers import make_shuffled_task as make_task
from tests.methods._helpers import one_view_task

from fewclip import functional as F
from fewclip import methods
from fewclip.methods.ape import ape_criterion
from fewclip.task import FeatureSet, Task

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def task64():
    return make_task(c=4, shots=3, d=8, views=3, seed=2, dtype=torch.float64)


def _unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def _n_correct(logits, y):
    """Validation images whose true class scores strictly above every other class (a tie
    counts as wrong, as the searches count)."""
    true = logits.gather(1, y[:, None])[:, 0]
    others = logits.scatter(1, y[:, None], float("-inf")).max(dim=1).values
    return int((true > others).sum())


def _criterion_loop(text, keys, labels, w):
    """The reference's cal_criterion: every class holds its text row and its keys; the mean
    of f_d·g_d over pairs of vectors from two different classes, and the unbiased variance
    of the text rows."""
    c, d = text.shape
    groups = [[text[i]] + [keys[j] for j in range(len(labels)) if labels[j] == i] for i in range(c)]
    total, count = np.zeros(d), 0
    for i, j in itertools.product(range(c), range(c)):
        if i != j:
            for f in groups[i]:
                for g in groups[j]:
                    total += f * g
                    count += 1
    return -w[0] * total / count + w[1] * np.var(text, axis=0, ddof=1)


def _ape_logits(task, x, channels, alpha, beta, gamma, scale=100.0):
    """APE's logits from the formula (float64): refined channels for the cache and the keys'
    zero-shot KL in bits as value weights."""
    text = _unit(task.text_weights.double())
    keys = _unit(task.support.views.double().mean(0))
    labels = task.support.labels
    ch = torch.as_tensor(channels)
    ks, ts = _unit(keys[:, ch]), _unit(text[:, ch])
    p_true = torch.softmax(ks @ ts.T, 1).gather(1, labels[:, None])[:, 0]
    kl = torch.log2((1 + 1e-6) / (p_true + 1e-6))
    xn = _unit(x.double())
    cache = torch.exp(-beta * (1 - _unit(xn[:, ch]) @ ks.T)) * torch.exp(gamma * kl)
    onehot = torch.nn.functional.one_hot(labels, task.n_classes).double()
    return scale * xn @ text.T + alpha * cache @ onehot


# -- the channel criterion and the channel count ------------------------------------------------
def test_ape_criterion_counts_the_text_row_of_a_class_without_keys():
    """A class with no cache key still contributes its text row (M_c = 1) to the pairs."""
    g = torch.Generator().manual_seed(3)
    text = _unit(torch.randn(4, 6, generator=g, dtype=torch.float64))
    keys = _unit(torch.randn(5, 6, generator=g, dtype=torch.float64))
    labels = torch.tensor([0, 1, 1, 2, 0])  # class 3, the last, has no key
    got = ape_criterion(text, keys, labels, weights=(0.6, 0.4))
    expected = _criterion_loop(text.numpy(), keys.numpy(), labels.numpy(), (0.6, 0.4))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-14)


def test_ape_with_a_single_channel(task64, queries64):
    """``channels=1`` keeps the one channel with the largest criterion."""
    ape = methods.create(
        "ape", channels=1, alpha=1.5, beta=2.0, gamma=0.3, search=False, dtype="float64"
    ).fit(task64)
    crit = ape_criterion(
        _unit(task64.text_weights), F.cache_keys(task64.support.views), task64.support.labels
    )
    assert ape.channels_.tolist() == [int(crit.argmax())]
    expected = _ape_logits(task64, queries64, ape.channels_, 1.5, 2.0, 0.3)
    torch.testing.assert_close(ape.logits(queries64), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["ape", "ape-t"])
def test_a_channel_fraction_rounding_to_zero_keeps_one_channel(task64, name):
    """0.05 of 8 channels rounds to 0: one channel is kept, the same as ``channels=1``."""
    kw = {"search": False, "dtype": "float64"}
    tiny = methods.create(name, channel_fraction=0.05, **kw).fit(task64)
    one = methods.create(name, channels=1, **kw).fit(task64)
    assert tiny.channels_.tolist() == one.channels_.tolist()
    assert len(tiny.channels_) == 1


# -- the (β, α, γ) search ---------------------------------------------------------------------
def test_ape_search_grids_use_each_axis_scale_and_step():
    """β, α and γ each follow their own ``search_scale``/``search_step`` entry: the search
    picks the reference loop's point (β outer, α, γ inner, strict >) on
    ``β_i = 0.1 + i·(5 − 0.1)/6``, ``α_i = 0.1 + i·(9 − 0.1)/4``, ``γ_i = i·0.6/3``."""
    task = make_task(c=4, shots=3, d=8, views=2, seed=4, dtype=torch.float64)
    ape = methods.create(
        "ape", channels=6, search_scale=(5.0, 9.0, 0.6), search_step=(6, 4, 3), dtype="float64"
    ).fit(task)
    betas = [0.1 + i * (5 - 0.1) / 6 for i in range(6)]
    alphas = [0.1 + i * (9 - 0.1) / 4 for i in range(4)]
    gammas = [i * 0.6 / 3 for i in range(3)]
    x, y = task.val.features, task.val.labels
    best, point = -1, None
    for b, a, gm in itertools.product(betas, alphas, gammas):
        n = _n_correct(_ape_logits(task, x, ape.channels_, a, b, gm), y)
        if n > best:
            best, point = n, (b, a, gm)
    assert point[0] != betas[0]  # the chosen β is inside the grid, not its shared start
    assert (ape.beta_, ape.alpha_, ape.gamma_) == pytest.approx(point, rel=1e-12)
    assert ape.val_accuracy_ == pytest.approx(100.0 * best / len(y))


def _tie_task():
    """Two classes on dyadic unit vectors: each validation image leans towards its own class by
    1e-10, a difference float64 keeps and float32 rounds away (the float32 scores tie
    exactly, and a tie counts as wrong)."""
    text = torch.tensor([[0.5, 0.5, -0.5, -0.5], [0.5, -0.5, 0.5, -0.5]], dtype=torch.float64)
    d = 1e-10
    vx = torch.tensor([[0.5, 0.5 + d, 0.5, 0.5], [0.5, 0.5 - d, 0.5, 0.5]], dtype=torch.float64)
    support = FeatureSet(text.clone(), torch.tensor([0, 1]), text.clone()[None])
    return Task(["a", "b"], text, support, FeatureSet(vx, torch.tensor([0, 1])))


def test_ape_float64_search_runs_in_float64():
    task = _tie_task()
    kw = {"channels": 4, "search_step": (4, 3, 2)}
    assert methods.create("ape", dtype="float64", **kw).fit(task).val_accuracy_ == 100.0
    assert methods.create("ape", dtype="float32", **kw).fit(task).val_accuracy_ == 0.0


def _as_float32(task):
    s, v = task.support, task.val
    return Task(
        task.classnames,
        task.text_weights.float(),
        FeatureSet(s.features.float(), s.labels, s.views.float()),
        FeatureSet(v.features.float(), v.labels),
    )


def test_ape_float32_search_of_a_float64_task_is_that_of_its_float32_copy(queries64):
    """A float32 APE casts a float64 task's validation features to float32 for its search."""
    task = make_task(c=4, shots=3, d=8, views=2, seed=4, dtype=torch.float64)
    kw = {"channels": 6, "search_step": (6, 4, 3)}
    a = methods.create("ape", **kw).fit(task)
    b = methods.create("ape", **kw).fit(_as_float32(task))
    assert (a.beta_, a.alpha_, a.gamma_, a.val_accuracy_) == (
        b.beta_,
        b.alpha_,
        b.gamma_,
        b.val_accuracy_,
    )
    assert torch.equal(a.logits(queries64), b.logits(queries64))


@pytest.mark.parametrize("name", ["ape", "ape-t"])
@pytest.mark.parametrize("how", ["search=False", "no validation set"])
def test_without_a_search_nothing_is_reported(task64, name, how):
    """``val_accuracy_`` is None and no search is reported to the conformance suite."""
    kw = {"search_step": (4, 3, 2) if name == "ape" else (4, 3), "dtype": "float64"}
    if name == "ape-t":
        kw["epochs"] = 1
    if how == "search=False":
        m = methods.create(name, search=False, **kw).fit(task64)
    else:
        m = methods.create(name, **kw).fit(task64.without_val())
    assert m.val_accuracy_ is None
    assert m._selection() is None


# -- APE-T ---------------------------------------------------------------------------------
def test_ape_t_keeps_its_constructor_arguments(queries64):
    """``gamma``, ``channel_fraction`` and ``scale`` given to APE-T are its own: reported by
    ``get_params`` and used by the fit (4 of 16 channels; zero-shot scale 50)."""
    task = make_task(c=4, shots=3, d=16, views=2, seed=1, dtype=torch.float64)
    kw = {"gamma": 0.3, "channel_fraction": 0.25, "scale": 50.0}
    apet = methods.create(
        "ape-t", epochs=0, alpha=1.2, beta=3.0, search=False, dtype="float64", **kw
    )
    assert {k: apet.get_params()[k] for k in kw} == kw
    apet.fit(task)
    assert len(apet.channels_) == 4
    text = _unit(task.text_weights)
    keys = _unit(task.support.views.mean(0))
    xn = _unit(queries64.repeat(1, 2))
    onehot = torch.nn.functional.one_hot(task.support.labels, 4).double()
    expected = 50.0 * xn @ text.T + 1.2 * torch.exp(-3.0 * (1 - xn @ keys.T)) @ onehot
    torch.testing.assert_close(apet.logits(queries64.repeat(1, 2)), expected)


@pytest.mark.parametrize("val", [True, False])
def test_ape_t_without_epochs_is_untrained(task64, val):
    task = task64 if val else task64.without_val()
    apet = methods.create("ape-t", epochs=0, search=False).fit(task)
    assert apet.best_epoch_ == 0
    assert torch.count_nonzero(apet.residual_) == 0


def test_ape_t_trains_a_single_epoch(task64):
    apet = methods.create("ape-t", epochs=1, lr=0.01, search=False).fit(task64.without_val())
    assert apet.best_epoch_ == 1
    assert torch.count_nonzero(apet.residual_) > 0
    assert not torch.equal(apet.value_weights_, torch.ones_like(apet.value_weights_))


def test_ape_t_half_precision_state(task64):
    """A float16 APE-T trains in float32 and stores its fitted tensors in float16."""
    apet = methods.create("ape-t", epochs=2, lr=0.01, search=False, dtype="float16").fit(task64)
    for name in ("residual_", "value_weights_", "keys_", "text_weights_"):
        assert getattr(apet, name).dtype == torch.float16, name


def test_ape_t_shuffling_follows_its_seed_only(task64):
    """Batches and view draws come from ``seed``: the global RNG does not change the fit, and
    another seed does."""
    kw = {"epochs": 3, "lr": 0.01, "batch_size": 4, "search": False, "dtype": "float64"}
    torch.manual_seed(0)
    a = methods.create("ape-t", seed=3, **kw).fit(task64)
    torch.manual_seed(1)
    b = methods.create("ape-t", seed=3, **kw).fit(task64)
    c = methods.create("ape-t", seed=4, **kw).fit(task64)
    assert torch.equal(a.residual_, b.residual_)
    assert torch.equal(a.value_weights_, b.value_weights_)
    assert not torch.equal(a.residual_, c.residual_)


def _plain_ape_t_accuracies(task, channels, epochs, lr, beta, alpha):
    """Validation accuracy after each epoch of full-batch APE-T on a one-view task, written
    from the paper's formula (t̃ = t + R, k̃_j = k_j + R_{y_j} on ``channels``; β and α
    fixed; cross-entropy; AdamW with eps 1e-3 and weight decay 0.1; cosine schedule)."""
    x = _unit(task.support.views[0])
    y = task.support.labels
    text = _unit(task.text_weights)
    c, d = text.shape
    onehot = torch.nn.functional.one_hot(y, c).double()
    xv, yv = _unit(task.val.features), task.val.labels

    def logits(q, res, values):
        shift = torch.zeros(c, d, dtype=torch.float64).index_copy(1, channels, res)
        cache = torch.exp(-beta * (1 - q @ (x + shift[y]).T)) * values
        return 100 * q @ (text + shift).T + alpha * cache @ onehot

    res = torch.nn.Parameter(torch.zeros(c, len(channels), dtype=torch.float64))
    values = torch.nn.Parameter(torch.ones(len(y), dtype=torch.float64))
    opt = torch.optim.AdamW([res, values], lr=lr, eps=1e-3, weight_decay=0.1, foreach=False)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    accs = []
    for _ in range(epochs):
        loss = torch.nn.functional.cross_entropy(logits(x, res, values), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            accs.append(float((logits(xv, res, values).argmax(1) == yv).double().mean()))
    return accs


def test_ape_t_validation_history_is_the_accuracy_of_each_epoch():
    """What APE-T reports to the conformance suite: the validation accuracy in [0, 1] after
    every epoch (scored with the fixed β = 4 and α), the earliest best epoch, and that the
    fitted method is not that epoch as it is (its (β, α) are searched afterwards)."""
    task = one_view_task(6)
    kw = {"epochs": 6, "lr": 2e-2, "beta": 4.0, "alpha": 3.0, "batch_size": 64}
    apet = methods.create("ape-t", channels=8, search_step=(4, 3), dtype="float64", **kw)
    apet.fit(task)
    accs = _plain_ape_t_accuracies(task, apet.channels_, 6, 2e-2, 4.0, 3.0)
    history, chosen, ties, final = apet._epoch_selection()
    assert [e for e, _ in history] == list(range(1, 7))
    np.testing.assert_allclose([s for _, s in history], accs, rtol=1e-12)
    assert len(set(accs)) > 1
    assert chosen == apet.best_epoch_ == accs.index(max(accs)) + 1
    assert (ties, final) == ("first", False)


def test_ape_t_reports_no_epoch_choice_without_validation_or_after_loading(task64, tmp_path):
    kw = {"epochs": 2, "lr": 0.01, "search_step": (4, 3)}
    assert methods.create("ape-t", **kw).fit(task64.without_val())._epoch_selection() is None
    apet = methods.create("ape-t", **kw).fit(task64)
    assert apet._epoch_selection() is not None
    apet.save(tmp_path / "m")
    assert methods.load(tmp_path / "m")._epoch_selection() is None


def test_ape_t_search_uses_the_trained_residual_and_value_weights():
    """After strong training (large residual, value weights far from 1) the (β, α) search is
    the reference loop on the adapted cache: keys k̃, text T̃ and value weights v."""
    task = make_task(c=4, shots=3, d=8, views=2, seed=1, dtype=torch.float64)
    apet = methods.create(
        "ape-t", epochs=6, lr=0.2, search_scale=(7, 7), search_step=(10, 6), dtype="float64"
    ).fit(task)
    assert float((apet.value_weights_ - 1).abs().max()) > 0.3
    assert float(apet.residual_.abs().max()) > 0.3
    x, y = _unit(task.val.features), task.val.labels
    onehot = torch.nn.functional.one_hot(apet.key_labels_, 4).double()
    best, point = -1, None
    betas = [0.1 + i * 6.9 / 10 for i in range(10)]
    alphas = [0.1 + i * 6.9 / 6 for i in range(6)]
    for b, a in itertools.product(betas, alphas):
        cache = torch.exp(-b * (1 - x @ apet.keys_.T)) * apet.value_weights_
        n = _n_correct(100 * x @ apet.text_weights_.T + a * cache @ onehot, y)
        if n > best:
            best, point = n, (b, a)
    assert (apet.beta_, apet.alpha_) == pytest.approx(point, rel=1e-12)
    assert apet.val_accuracy_ == pytest.approx(100.0 * best / len(y))


def test_ape_t_logits_are_differentiable_in_the_queries(task64, queries64):
    """Queries that require a gradient get the same logits, and their gradient is that of the
    formula ``scale·x·T̃ᵀ + α·Σ_j exp(−β(1 − x·k̃_j))·v_j·onehot(y_j)``."""
    apet = methods.create(
        "ape-t", epochs=4, lr=0.05, alpha=2.0, beta=3.0, search=False, dtype="float64"
    ).fit(task64)
    assert float((apet.value_weights_ - 1).abs().max()) > 0.05
    onehot = torch.nn.functional.one_hot(apet.key_labels_, 4).double()
    x = queries64.clone().requires_grad_(True)
    got = apet.logits(x)
    torch.testing.assert_close(got, apet.logits(queries64), rtol=1e-12, atol=1e-12)
    (got * torch.arange(4.0, dtype=torch.float64)).sum().backward()
    ref_x = queries64.clone().requires_grad_(True)
    xn = _unit(ref_x)
    cache = torch.exp(-3.0 * (1 - xn @ apet.keys_.T)) * apet.value_weights_
    ref = 100 * xn @ apet.text_weights_.T + 2.0 * cache @ onehot
    torch.testing.assert_close(got, ref)
    (ref * torch.arange(4.0, dtype=torch.float64)).sum().backward()
    torch.testing.assert_close(x.grad, ref_x.grad)
