"""APE and APE-T against the reference loops: criterion, logits, searches, trained residual."""

import itertools

import numpy as np
import pytest
import torch
from tests.methods._helpers import make_shuffled_task as make_task
from tests.methods._helpers import np_unit as _unit
from tests.methods._helpers import one_view_task

from fewclip import functional as F
from fewclip import methods
from fewclip.methods import ape as ape_module
from fewclip.methods.ape import ape_criterion, ape_zero_shot_kl
from fewclip.task import FeatureSet, Task

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def task64():
    return make_task(c=4, shots=3, d=8, views=3, seed=2, dtype=torch.float64)


def _criterion_loop(text, keys, labels, w):
    """The reference's cal_criterion: quadruple loop over class pairs and their vectors."""
    c, d = text.shape
    groups = [[text[i]] + [keys[j] for j in range(len(labels)) if labels[j] == i] for i in range(c)]
    sim_sum, count = np.zeros(d), 0
    for i, j in itertools.product(range(c), range(c)):
        if i == j:
            continue
        for f in groups[i]:
            for h in groups[j]:
                sim_sum += f * h
                count += 1
    return -w[0] * sim_sum / count + w[1] * np.var(text, axis=0, ddof=1)


@pytest.mark.parametrize("per", [None, [1, 3, 2, 2]])
def test_ape_criterion_matches_the_reference_loop(per):
    task = make_task(c=4, shots=2, d=7, dtype=torch.float64, per=per)
    text = F.l2_normalize(task.text_weights)
    keys = F.cache_keys(task.support.views)
    got = ape_criterion(text, keys, task.support.labels, weights=(0.7, 0.3))
    expected = _criterion_loop(text.numpy(), keys.numpy(), task.support.labels.numpy(), (0.7, 0.3))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="at least 2 classes"):
        ape_criterion(text[:1], keys[:2], torch.zeros(2, dtype=torch.long))


def test_ape_zero_shot_kl_is_the_reference_sum(task64):
    keys = F.cache_keys(task64.support.views)
    text = F.l2_normalize(task64.text_weights)
    labels = task64.support.labels
    got = ape_zero_shot_kl(keys, labels, text)
    p = torch.softmax(keys @ text.T, dim=1).numpy()
    v = np.eye(4)[labels.numpy()]
    expected = np.sum(v * np.log2((v + 1e-6) / (p + 1e-6)), axis=1)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)


def _ape_logits_loop(task, queries, channels, alpha, beta, gamma):
    """APE's logits with explicit loops over cache entries (float64 numpy)."""
    text = _unit(task.text_weights.numpy())
    keys = _unit(task.support.views.numpy().mean(0))
    labels = task.support.labels.numpy()
    ch = np.asarray(channels)
    keys_s, text_s = _unit(keys[:, ch]), _unit(text[:, ch])
    out = []
    for q in _unit(queries.numpy()):
        logits = 100.0 * text @ q
        qs = _unit(q[ch])
        for j in range(len(labels)):
            z = keys_s[j] @ text_s.T
            p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
            kl = np.log2((1 + 1e-6) / (p[labels[j]] + 1e-6))
            logits[labels[j]] += alpha * np.exp(-beta * (1 - qs @ keys_s[j])) * np.exp(gamma * kl)
        out.append(logits)
    return np.stack(out)


def test_ape_logits_follow_the_formula(task64, queries64):
    ape = methods.create(
        "ape", alpha=1.7, beta=3.0, gamma=0.4, search=False, channels=5, dtype="float64"
    ).fit(task64)
    text = F.l2_normalize(task64.text_weights)
    crit = ape_criterion(text, F.cache_keys(task64.support.views), task64.support.labels)
    top = sorted(np.argsort(-crit.numpy())[:5].tolist())
    assert ape.channels_.tolist() == top
    expected = _ape_logits_loop(task64, queries64, top, 1.7, 3.0, 0.4)
    np.testing.assert_allclose(ape.logits(queries64).numpy(), expected, rtol=1e-10)


def test_ape_search_selects_the_reference_point():
    task = make_task(c=4, shots=3, d=8, views=2, seed=5, dtype=torch.float64)
    ape = methods.create(
        "ape", channels=6, search_scale=(7, 7, 0.5), search_step=(12, 6, 4), dtype="float64"
    ).fit(task)
    # the reference loop: β outer, α, γ inner, strict >
    xv, yv = task.val.features, task.val.labels
    betas, alphas = F.reference_grid(7, 12), F.reference_grid(7, 6)
    gammas = [i * 0.5 / 4 for i in range(4)]
    best, point = 0.0, None
    for b, a, gm in itertools.product(betas, alphas, gammas):
        m = methods.create("ape", channels=6, alpha=a, beta=b, gamma=gm, search=False)
        acc = 100.0 * m.set_params(dtype="float64").fit(task).score(xv, yv)
        if acc > best:
            best, point = acc, (b, a, gm)
    assert (ape.beta_, ape.alpha_, ape.gamma_) == point
    assert ape.val_accuracy_ == pytest.approx(best)


def test_ape_with_all_channels_and_gamma_zero_is_tip_adapter(task64, queries64):
    ape = methods.create("ape", channels=8, gamma=0.0, alpha=1.3, beta=4.0, search=False)
    tip = methods.create("tip-adapter", alpha=1.3, beta=4.0, search=False)
    torch.testing.assert_close(
        ape.fit(task64).logits(queries64), tip.fit(task64).logits(queries64), rtol=1e-10, atol=1e-10
    )


def test_ape_t_with_zero_residual_is_tip_adapter(task64, queries64):
    apet = methods.create("ape-t", epochs=0, alpha=1.3, beta=4.0, search=False).fit(task64)
    tip = methods.create("tip-adapter", alpha=1.3, beta=4.0, search=False).fit(task64)
    assert torch.count_nonzero(apet.residual_) == 0
    assert torch.equal(apet.value_weights_, torch.ones_like(apet.value_weights_))
    torch.testing.assert_close(apet.logits(queries64), tip.logits(queries64))


def test_ape_t_trains_residual_on_the_selected_channels(task64):
    apet = methods.create("ape-t", epochs=5, channels=3, search=False, dtype="float64")
    apet.fit(task64)
    assert apet.residual_.shape == (4, 3)
    assert torch.count_nonzero(apet.residual_) > 0
    keys = F.cache_keys(task64.support.views)[torch.argsort(task64.support.labels, stable=True)]
    delta = apet.keys_ - keys
    off = [d for d in range(8) if d not in apet.channels_.tolist()]
    assert torch.count_nonzero(delta[:, off]) == 0  # the residual only touches its channels
    torch.testing.assert_close(delta[:, apet.channels_], apet.residual_[apet.key_labels_])
    text = F.l2_normalize(task64.text_weights)
    torch.testing.assert_close((apet.text_weights_ - text)[:, apet.channels_], apet.residual_)
    last = methods.create("ape-t", epochs=4, search=False).fit(task64.without_val())
    assert last.best_epoch_ == 4


@pytest.mark.parametrize("bank_dtype", [torch.float64, torch.float32])
def test_ape_t_affinity_table_gives_the_per_step_training(monkeypatch, bank_dtype):
    """With more epochs than views, APE-T computes each stored view's cache affinity once
    (products of batch_size rows, a shorter last batch on its own); the trained residual and
    value weights are those of the per-step computation (the table disabled), also when the
    stored views are float32 and the method float64. The affinity products are counted, so
    the test knows which path each fit took."""
    task = make_task(c=4, shots=3, d=8, views=3, seed=2, dtype=bank_dtype)
    params = dict(epochs=5, batch_size=5, channels=3, search=False, dtype="float64")
    calls = []
    real = ape_module.tip_affinity

    def counted(x, keys, **kw):
        calls.append(len(x))
        return real(x, keys, **kw)

    monkeypatch.setattr(ape_module, "tip_affinity", counted)
    table = methods.create("ape-t", **params).fit(task)
    # a table of 3 views × 12 images = 36 rows in 8 products of 5 rows (the last overlapping);
    # an epoch draws one view of each image (batches of 5, 5, 2), and only the short batch
    # of each epoch is computed in the steps
    assert calls[:8] == [5] * 8
    assert calls[8:] == [2] * 5
    monkeypatch.setattr("fewclip.methods.ape._TABLE_BYTES", 0)
    calls.clear()
    per_step = methods.create("ape-t", **params).fit(task)
    assert calls == [5, 5, 2] * 5  # every batch of every epoch
    assert torch.equal(table.residual_, per_step.residual_)
    assert torch.equal(table.value_weights_, per_step.value_weights_)
    assert torch.count_nonzero(table.residual_) > 0


def _plain_ape_t(task, channels, epochs, lr, beta, alpha):
    """Full-batch APE-T on a one-view task (tests.methods._helpers.one_view_task), written from
    the paper's formula with autograd: t̃ = t + R and k̃_j = k_j + R_{y_j} on ``channels``,
    logits ``100·x·T̃ᵀ + α·Σ_j exp(−β(1 − x·k̃_j))·v_j·onehot(y_j)``, cross-entropy, torch's
    (unfused) AdamW (eps 1e-3, weight decay 0.1) and a per-iteration cosine schedule.
    Returns ``logits(x, R, v)`` and the (R, v) after each epoch."""
    x = F.l2_normalize(task.support.views[0])
    y = task.support.labels
    order = torch.argsort(y, stable=True)
    keys, key_labels = x[order], y[order]
    text = F.l2_normalize(task.text_weights)
    c, d = text.shape
    onehot = torch.nn.functional.one_hot(key_labels, c).double()

    def logits(q, res, values):
        shift = torch.zeros(c, d, dtype=torch.float64).index_copy(1, channels, res)
        adapted_text, adapted_keys = text + shift, keys + shift[key_labels]
        cache = torch.exp(-beta * (1 - q @ adapted_keys.T)) * values
        return 100 * q @ adapted_text.T + alpha * cache @ onehot

    res = torch.nn.Parameter(torch.zeros(c, len(channels), dtype=torch.float64))
    values = torch.nn.Parameter(torch.ones(len(keys), dtype=torch.float64))
    opt = torch.optim.AdamW([res, values], lr=lr, eps=1e-3, weight_decay=0.1, foreach=False)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    after = []
    for _ in range(epochs):
        loss = torch.nn.functional.cross_entropy(logits(x, res, values), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        after.append((res.detach().clone(), values.detach().clone()))
    return logits, after


def test_ape_t_keeps_the_best_validation_epoch():
    task = one_view_task(6)
    epochs, lr, beta, alpha = 8, 2e-2, 2.0, 3.0
    kw = {"epochs": epochs, "lr": lr, "beta": beta, "alpha": alpha, "batch_size": 64}
    apet = methods.create("ape-t", channels=8, search=False, dtype="float64", **kw).fit(task)
    logits, after = _plain_ape_t(task, apet.channels_, epochs, lr, beta, alpha)
    xv, yv = F.l2_normalize(task.val.features), task.val.labels
    with torch.no_grad():
        accs = [float((logits(xv, r, v).argmax(1) == yv).double().mean()) for r, v in after]
    best = max(range(epochs), key=lambda e: (accs[e], -e)) + 1  # strict >: the earliest best
    assert best == 3  # 85%, 90%, then 100% from epoch 3 on: neither the first nor the last
    assert apet.best_epoch_ == best
    torch.testing.assert_close(apet.residual_, after[best - 1][0], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(apet.value_weights_, after[best - 1][1], rtol=1e-9, atol=1e-12)
    assert not torch.allclose(apet.residual_, after[-1][0])
    last = methods.create("ape-t", channels=8, search=False, dtype="float64", **kw)
    assert last.fit(task.without_val()).best_epoch_ == epochs
    torch.testing.assert_close(last.residual_, after[-1][0], rtol=1e-9, atol=1e-12)


def test_ape_t_search_is_the_reference_loop_on_the_trained_cache():
    task = make_task(c=4, shots=3, d=8, views=2, seed=6, dtype=torch.float64)
    apet = methods.create(
        "ape-t", epochs=3, search_scale=(7, 7), search_step=(10, 6), dtype="float64"
    ).fit(task)
    x = F.l2_normalize(task.val.features)
    best, point = 0.0, None
    for b, a in itertools.product(F.reference_grid(7, 10), F.reference_grid(7, 6)):
        cache = torch.exp(-b * (1 - x @ apet.keys_.T)) * apet.value_weights_
        onehot = torch.nn.functional.one_hot(apet.key_labels_, 4).double()
        logits = 100 * x @ apet.text_weights_.T + a * cache @ onehot
        acc = 100.0 * float((logits.argmax(1) == task.val.labels).double().mean())
        if acc > best:
            best, point = acc, (b, a)
    assert (apet.beta_, apet.alpha_) == point
    assert apet.val_accuracy_ == pytest.approx(best)


def test_ape_needs_two_classes():
    x = torch.randn(3, 4)
    one = Task(["a"], F.l2_normalize(torch.randn(1, 4)), FeatureSet(x, torch.zeros(3).long()))
    with pytest.raises(ValueError, match="at least 2 classes"):
        methods.create("ape", search=False).fit(one)
