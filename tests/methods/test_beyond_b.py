"""TaskRes, APE / APE-T, TIP-X and the cross-modal linear probe against independent computations.

Closed forms are checked in float64 against plain loops; searches against the literal
reference loops on small grids; trained methods on limits with a known answer (zero residual =
zero-shot, zero-residual APE-T = Tip-Adapter) and on separable data.
"""

import itertools
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from fewclip import functional as F
from fewclip import methods
from fewclip.methods.ape import ape_criterion, ape_zero_shot_kl
from fewclip.methods.tip_x import image_text_signature, kl_divergence_matrix
from fewclip.task import FeatureSet, Task
from fewclip.testing import SyntheticWorld

NEW = ["taskres", "ape", "ape-t", "tip-x", "cross-modal-lp"]


@pytest.fixture(autouse=True)
def _one_thread():
    """These tests run thousands of tiny ops, where a second intra-op thread only adds
    synchronisation (and stalls badly on a shared machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_task(c=5, shots=4, d=16, views=3, seed=0, val=True, dtype=torch.float32, per=None):
    """Small clustered task; ``per`` gives unequal shots per class."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(c, d, generator=g, dtype=dtype)
    counts = per if per is not None else [shots] * c
    labels = torch.repeat_interleave(torch.arange(c), torch.tensor(counts))
    labels = labels[torch.randperm(len(labels), generator=g)]
    feats = 3 * (means[labels] + 0.7 * torch.randn(len(labels), d, generator=g, dtype=dtype))
    bank = feats + 0.2 * torch.randn(views, len(labels), d, generator=g, dtype=dtype)
    vy = torch.arange(c).repeat_interleave(3)
    vx = 3 * (means[vy] + 0.7 * torch.randn(len(vy), d, generator=g, dtype=dtype))
    text = F.l2_normalize(means + torch.randn(c, d, generator=g, dtype=dtype))
    return Task(
        [f"class {i}" for i in range(c)],
        text,
        FeatureSet(feats, labels, bank),
        FeatureSet(vx, vy) if val else None,
    )


def _unit(a):
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


@pytest.fixture
def task64():
    return make_task(c=4, shots=3, d=8, views=3, seed=2, dtype=torch.float64)


@pytest.fixture
def queries64():
    return torch.randn(7, 8, generator=torch.Generator().manual_seed(9), dtype=torch.float64) * 3


# -- the grid engine ----------------------------------------------------------------------------
def _brute_counts(x, y, keys, labels, base, betas, alphas, kw=None, extra=None, gammas=(0.0,)):
    """Every grid point evaluated separately (float64, dense one-hot values, strict margins)."""
    c = base.shape[1]
    out = torch.zeros(len(betas), 1 if kw is None else len(kw), len(gammas), len(alphas))
    onehot = torch.nn.functional.one_hot(labels, c).double()
    for bi, b in enumerate(betas):
        aff = torch.exp(-b * (1 - x.double() @ keys.double().T))
        for g in range(out.shape[1]):
            w = torch.ones(len(labels)) if kw is None else kw[g].double()
            cache = aff @ (onehot * w[:, None])
            for gi, ai in itertools.product(range(len(gammas)), range(len(alphas))):
                logits = base.double() + alphas[ai] * cache
                if extra is not None:
                    logits = logits + gammas[gi] * extra.double()
                true = logits.gather(1, y[:, None])[:, 0]
                others = logits.scatter(1, y[:, None], float("-inf")).amax(1)
                out[bi, g, gi, ai] = int((true > others).sum())
    return out.long()


@pytest.mark.parametrize(
    ("variant", "dtype"),
    [
        ("plain", torch.float32),
        ("weights", torch.float64),
        ("extra", torch.float32),
        ("both", torch.float64),
        ("free-betas", torch.float32),
    ],
)
def test_cache_grid_counts_equals_brute_force(variant, dtype):
    g = torch.Generator().manual_seed(3)
    n, c, d = 41, 6, 10
    labels = torch.repeat_interleave(torch.arange(c), torch.tensor([1, 3, 2, 4, 2, 3]))
    labels = labels[torch.randperm(len(labels), generator=g)]  # unsorted, uneven classes
    keys = F.l2_normalize(torch.randn(len(labels), d, generator=g, dtype=dtype))
    x = F.l2_normalize(torch.randn(n, d, generator=g, dtype=dtype))
    y = torch.randint(c, (n,), generator=g)
    base = 10 * x @ F.l2_normalize(torch.randn(c, d, generator=g, dtype=dtype)).T
    betas = [0.5, 2.0, 1.0, 4.5] if variant == "free-betas" else F.reference_grid(7, 37)
    alphas = F.reference_grid(3, 9)
    kw = extra = None
    gammas = (0.0,)
    if variant in ("weights", "both"):
        kw = 2 * torch.rand(3, len(labels), generator=g, dtype=dtype)
    if variant in ("extra", "both"):
        extra = torch.randn(n, c, generator=g, dtype=dtype)
        gammas = [0.2 * i for i in range(6)]
    got = F.cache_grid_counts(
        x, y, keys, labels, base, betas, alphas, key_weights=kw, extra=extra, gammas=gammas,
        chunk_bytes=3000,  # several row chunks
    )  # fmt: skip
    expected = _brute_counts(x, y, keys, labels, base, betas, alphas, kw, extra, gammas)
    assert got.dtype == torch.long
    assert torch.equal(got, expected)


@pytest.mark.parametrize("variant", ["plain", "both"])
def test_cache_grid_counts_row_groups_on_two_threads(monkeypatch, variant):
    """With two intra-op threads the counting stage splits the rows into groups that run in
    parallel Python threads; the counts must not change, and the caller's thread count must be
    restored (also the one new threads start with)."""
    g = torch.Generator().manual_seed(11)
    n, c, d = 203, 7, 12
    labels = torch.arange(c).repeat_interleave(3)
    keys = F.l2_normalize(torch.randn(len(labels), d, generator=g, dtype=torch.float64))
    x = F.l2_normalize(torch.randn(n, d, generator=g, dtype=torch.float64))
    y = torch.randint(c, (n,), generator=g)
    base = 10 * x @ F.l2_normalize(torch.randn(c, d, generator=g, dtype=torch.float64)).T
    betas, alphas = F.reference_grid(7, 40), F.reference_grid(3, 8)
    kw = extra = None
    gammas = (0.0,)
    if variant == "both":
        kw = 2 * torch.rand(2, len(labels), generator=g, dtype=torch.float64)
        extra = torch.randn(n, c, generator=g, dtype=torch.float64)
        gammas = [0.3 * i for i in range(4)]
    # 6 rows per cache block, so 203 rows make 34 blocks and, on two threads, two row groups
    monkeypatch.setattr(F, "_GRID_BLOCK_BYTES", 6 * len(labels) * 8)
    kwargs = dict(key_weights=kw, extra=extra, gammas=gammas)
    assert torch.get_num_threads() == 1
    one = F.cache_grid_counts(x, y, keys, labels, base, betas, alphas, **kwargs)
    calls = []
    real = F._grid_rows_counts
    monkeypatch.setattr(
        F, "_grid_rows_counts", lambda s, *a, **k: calls.append(s.shape[0]) or real(s, *a, **k)
    )
    torch.set_num_threads(2)
    two = F.cache_grid_counts(x, y, keys, labels, base, betas, alphas, **kwargs)
    assert torch.get_num_threads() == 2
    with ThreadPoolExecutor(1) as pool:  # a fresh thread starts with the caller's count
        assert pool.submit(torch.get_num_threads).result() == 2
    assert sorted(calls) == [101, 102]
    assert torch.equal(two, one)
    assert torch.equal(
        one, _brute_counts(x, y, keys, labels, base, betas, alphas, kw, extra, gammas)
    )


def test_cache_grid_counts_equals_tip_grid_counts_and_accepts_affinity():
    g = torch.Generator().manual_seed(0)
    keys = F.l2_normalize(torch.randn(30, 12, generator=g))
    labels = torch.arange(5).repeat_interleave(6)
    x = F.l2_normalize(torch.randn(50, 12, generator=g))
    y = torch.randint(5, (50,), generator=g)
    w = F.l2_normalize(torch.randn(5, 12, generator=g))
    betas, alphas = F.reference_grid(7, 50), F.reference_grid(3, 10)
    tip = F.tip_grid_counts(x, y, keys, labels, w, betas, alphas)
    ours = F.cache_grid_counts(x, y, keys, labels, 100 * x @ w.T, betas, alphas)
    assert torch.equal(ours[:, 0, 0, :], tip)
    given = F.cache_grid_counts(
        x, y, keys, labels, 100 * x @ w.T, betas, alphas, affinity=x @ keys.T
    )
    assert torch.equal(given, ours)


def test_cache_grid_counts_bad_input():
    x, keys = F.l2_normalize(torch.randn(4, 3)), F.l2_normalize(torch.randn(6, 3))
    labels, y, base = torch.arange(3).repeat(2), torch.zeros(4, dtype=torch.long), torch.zeros(4, 3)
    with pytest.raises(ValueError, match="betas: expected positive"):
        F.cache_grid_counts(x, y, keys, labels, base, [0.0, 1.0], [1.0])
    with pytest.raises(ValueError, match="alphas: expected non-negative"):
        F.cache_grid_counts(x, y, keys, labels, base, [1.0], [-1.0])
    with pytest.raises(ValueError, match="gammas: expected a single value"):
        F.cache_grid_counts(x, y, keys, labels, base, [1.0], [1.0], gammas=(0.0, 1.0))
    with pytest.raises(ValueError, match="labels: expected shape"):
        F.cache_grid_counts(x, y, keys, labels[:5], base, [1.0], [1.0])
    with pytest.raises(ValueError, match="key_weights: expected shape"):
        F.cache_grid_counts(x, y, keys, labels, base, [1.0], [1.0], key_weights=torch.ones(6))
    with pytest.raises(ValueError, match="extra: expected shape"):
        F.cache_grid_counts(
            x, y, keys, labels, base, [1.0], [1.0], extra=torch.ones(4, 2), gammas=(0.0, 1.0)
        )


# -- APE ------------------------------------------------------------------------------------------
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
    assert apet.residual_.shape == (4, 3) and torch.count_nonzero(apet.residual_) > 0
    assert 1 <= apet.best_epoch_ <= 5
    keys = F.cache_keys(task64.support.views)[torch.argsort(task64.support.labels, stable=True)]
    delta = apet.keys_ - keys
    off = [d for d in range(8) if d not in apet.channels_.tolist()]
    assert torch.count_nonzero(delta[:, off]) == 0  # the residual only touches its channels
    torch.testing.assert_close(delta[:, apet.channels_], apet.residual_[apet.key_labels_])
    text = F.l2_normalize(task64.text_weights)
    torch.testing.assert_close((apet.text_weights_ - text)[:, apet.channels_], apet.residual_)
    last = methods.create("ape-t", epochs=4, search=False).fit(task64.without_val())
    assert last.best_epoch_ == 4


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


# -- TIP-X ----------------------------------------------------------------------------------------
def test_kl_divergence_matrix_matches_a_double_loop():
    g = torch.Generator().manual_seed(1)
    p = torch.softmax(torch.randn(5, 6, generator=g, dtype=torch.float64), 1)
    q = torch.softmax(torch.randn(7, 6, generator=g, dtype=torch.float64), 1)
    p[0, 2] = 0.0  # 0·log 0 = 0
    expected = np.zeros((5, 7))
    for i, j in itertools.product(range(5), range(7)):
        expected[i, j] = sum(
            p[i, c].item() * (math.log(p[i, c].item()) - math.log(q[j, c].item()))
            for c in range(6)
            if p[i, c] > 0
        )
    np.testing.assert_allclose(kl_divergence_matrix(p, q).numpy(), expected, rtol=1e-12)


def _tipx_logits_loop(task, queries, ranges_from, alpha, beta, gamma, tau=0.5):
    """TIP-X logits with the KL matrix and ψ built from explicit double loops."""
    text = _unit(task.text_weights.numpy())
    keys = _unit(task.support.views.numpy().mean(0))
    labels = task.support.labels.numpy()

    def sig(v):
        z = v @ text.T / tau
        e = np.exp(z - z.max())
        return e / e.sum()

    def kl(a, b):
        return sum(pa * (math.log(pa) - math.log(pb)) for pa, pb in zip(a, b, strict=True))

    ref = _unit(ranges_from.numpy())
    kls = [kl(sig(r), sig(k)) for r in ref for k in keys]
    affs = [float(r @ k) for r in ref for k in keys]
    slope = (max(affs) - min(affs)) / (max(kls) - min(kls))
    out = []
    for q in _unit(queries.numpy()):
        logits = 100.0 * text @ q
        for j, k in enumerate(keys):
            psi = (kl(sig(q), sig(k)) - min(kls)) * slope + min(affs)
            logits[labels[j]] += alpha * math.exp(-beta * (1 - q @ k)) - gamma * psi
        out.append(logits)
    return np.stack(out)


@pytest.mark.parametrize("with_val", [True, False])
def test_tip_x_logits_follow_the_formula(task64, queries64, with_val):
    task = task64 if with_val else task64.without_val()
    tipx = methods.create(
        "tip-x", alpha=2.0, beta=3.0, gamma=0.7, search=False, dtype="float64"
    ).fit(task)
    ranges_from = task64.val.features if with_val else task64.support.features
    expected = _tipx_logits_loop(task64, queries64, ranges_from, 2.0, 3.0, 0.7)
    np.testing.assert_allclose(tipx.logits(queries64).numpy(), expected, rtol=1e-9)


def test_tip_x_signature_and_gamma_zero_is_tip_adapter(task64, queries64):
    w = F.l2_normalize(task64.text_weights)
    x = F.l2_normalize(queries64)
    sig = image_text_signature(x, w, temperature=0.5)
    torch.testing.assert_close(sig, torch.softmax(2 * x @ w.T, 1))
    tipx = methods.create("tip-x", alpha=1.1, beta=2.5, gamma=0.0, search=False).fit(task64)
    tip = methods.create("tip-adapter", alpha=1.1, beta=2.5, search=False).fit(task64)
    torch.testing.assert_close(tipx.logits(queries64), tip.logits(queries64))


def test_tip_x_search_selects_the_reference_point():
    task = make_task(c=4, shots=3, d=8, views=2, seed=7, dtype=torch.float64)
    tipx = methods.create(
        "tip-x", search_scale=(50, 50, 30), search_step=(8, 5, 6), dtype="float64"
    ).fit(task)
    betas = [i * 49 / 8 + 1 for i in range(8)]
    alphas, gammas = F.reference_grid(50, 5), F.reference_grid(30, 6)
    xv, yv = task.val.features, task.val.labels
    best, point = 0.0, None
    for a, b, gm in itertools.product(alphas, betas, gammas):  # the reference: α, β, γ
        m = methods.create("tip-x", alpha=a, beta=b, gamma=gm, search=False, dtype="float64")
        acc = 100.0 * m.fit(task).score(xv, yv)
        if acc > best:
            best, point = acc, (a, b, gm)
    assert (tipx.alpha_, tipx.beta_, tipx.gamma_) == point
    assert tipx.val_accuracy_ == pytest.approx(best)


# -- TaskRes --------------------------------------------------------------------------------------
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


def _separable_world_task(val="none"):
    """A CLIP-like world where zero-shot is poor (~35% on the support set) but the support
    set is linearly separable in 64 dimensions: a trained head should fit it exactly."""
    world = SyntheticWorld(10, 64, seed=0, gap=0.8, sep=0.2, spread=0.05, test_size=500)
    return world.calibrate(0.4).task(8, seed=1, views=2, val=val)


def test_taskres_fits_separable_data_that_zero_shot_gets_wrong():
    task = _separable_world_task()
    s = task.support
    assert methods.create("zero-shot").fit(task).score(s.features, s.labels) < 0.5
    m = methods.create("taskres", alpha=1.0, epochs=100, lr=1e-2).fit(task)
    assert m.score(s.features, s.labels) == 1.0


def test_taskres_lr_schedule():
    m = methods.create("taskres", epochs=200)
    assert m._lr_at(0) == 1e-5
    assert m._lr_at(1) == pytest.approx(2e-3)  # Dassl's warm-up recount
    assert m._lr_at(2) == pytest.approx(0.5 * 2e-3 * (1 + math.cos(math.pi / 200)))
    assert m._lr_at(199) == pytest.approx(0.5 * 2e-3 * (1 + math.cos(math.pi * 198 / 200)))


# -- cross-modal linear probe ---------------------------------------------------------------------
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
    assert m.best_iter_ == 400 and m.val_accuracy_ is None  # no val: the last iterate
    early = methods.create("cross-modal-lp", iters=400, eval_every=50)
    early.fit(_separable_world_task(val="fewshot"))
    assert early.best_iter_ % 50 == 0 and early.best_iter_ < 400
    assert early.val_accuracy_ is not None


def test_cross_modal_search_sweeps_on_validation(task):
    m = methods.create(
        "cross-modal-lp",
        iters=60,
        eval_every=20,
        search=True,
        search_lr=(1e-3, 1e-2),
        search_weight_decay=(0.0,),
        search_batch_size=(4, 8),
    ).fit(task)
    assert m.lr_ in (1e-3, 1e-2) and m.batch_size_ in (4, 8) and m.weight_decay_ == 0.0
    best = []
    for lr, bs in itertools.product((1e-3, 1e-2), (4, 8)):
        one = methods.create("cross-modal-lp", iters=60, eval_every=20, lr=lr, batch_size=bs)
        best.append(one.fit(task).val_accuracy_)
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


# -- all five -------------------------------------------------------------------------------------
FAST_NEW = {
    "taskres": {"epochs": 10},
    "ape": {"search_step": (8, 4, 3)},
    "ape-t": {"epochs": 3, "search_step": (8, 4)},
    "tip-x": {"search_step": (6, 4, 3)},
    "cross-modal-lp": {"iters": 60, "eval_every": 20},
}


@pytest.mark.parametrize("name", NEW)
def test_float64_and_float16(name, task64, queries64):
    kw = FAST_NEW[name]
    m64 = methods.create(name, dtype="float64", **kw).fit(task64)
    out64 = m64.logits(queries64)
    assert out64.dtype == torch.float64
    t32 = Task(
        task64.classnames,
        task64.text_weights.float(),
        FeatureSet(
            task64.support.features.float(), task64.support.labels, task64.support.views.float()
        ),
        FeatureSet(task64.val.features.float(), task64.val.labels),
    )
    if name in ("ape", "ape-t", "tip-x"):
        kw = {**kw, "search": False}
    m16 = methods.create(name, dtype="float16", **kw).fit(t32)
    out16 = m16.logits(queries64.float())
    assert out16.dtype == torch.float16 and torch.isfinite(out16).all()


@pytest.mark.parametrize("name", NEW)
def test_save_load_after_search_and_training(name, task64, queries64, tmp_path):
    m = methods.create(name, dtype="float64", **FAST_NEW[name]).fit(task64)
    m.save(tmp_path / name)
    loaded = methods.load(tmp_path / name)
    assert torch.equal(loaded.logits(queries64), m.logits(queries64))
    for attr in ("alpha_", "beta_", "gamma_", "val_accuracy_", "best_epoch_", "lr_"):
        if hasattr(m, attr):
            assert getattr(loaded, attr) == getattr(m, attr)


def test_bad_hyper_parameters(task):
    cases = [
        ("ape", {"channels": 17}, "channels: expected an integer in \\[1, 16\\]"),
        ("ape", {"channel_fraction": 0.0}, "channel_fraction: expected a value in"),
        ("ape", {"search_step": (10, 5)}, "search_scale and search_step: expected 3 entries"),
        ("ape", {"criterion_weights": (1.0,)}, "weights: expected two entries"),
        ("ape-t", {"epochs": -1}, "epochs: expected a non-negative integer"),
        ("ape-t", {"batch_size": 0}, "batch_size: expected a positive integer"),
        ("tip-x", {"temperature": 0.0}, "temperature: expected a positive value"),
        ("tip-x", {"search_scale": (1.0, 2.0)}, "expected three entries each"),
        ("tip-x", {"search_step": (0, 2, 2)}, "search_step: expected positive integers"),
        ("taskres", {"epochs": -2}, "epochs: expected a non-negative integer"),
        ("taskres", {"base_norm": 0.0}, "base_norm: expected a positive value"),
        ("cross-modal-lp", {"text_ratio": 1.0}, "text_ratio: expected a value in"),
        ("cross-modal-lp", {"wiseft_ratio": 2.0}, "wiseft_ratio: expected a value in"),
        ("cross-modal-lp", {"batch_size": 1}, "batch_size: expected at least 2"),
        ("cross-modal-lp", {"eval_every": 0}, "eval_every: expected a positive integer"),
    ]
    for name, params, message in cases:
        with pytest.raises(ValueError, match=message):
            methods.create(name, **params).fit(task)


def test_ape_needs_two_classes():
    x = torch.randn(3, 4)
    one = Task(["a"], F.l2_normalize(torch.randn(1, 4)), FeatureSet(x, torch.zeros(3).long()))
    with pytest.raises(ValueError, match="at least 2 classes"):
        methods.create("ape", search=False).fit(one)


# -- synthetic world: every method beats zero-shot at 16 shots -----------------------------------
SANITY = {  # fewer epochs / iterations than the paper defaults, to keep the suite fast
    "taskres": {"epochs": 30},
    "ape": {"search_step": (30, 10, 5)},
    "ape-t": {"search_step": (30, 10)},
    "tip-x": {"search_step": (30, 10, 10)},
    "cross-modal-lp": {"iters": 300},
}


@pytest.mark.parametrize("name", NEW)
def test_synthetic_world_beats_zero_shot_at_16_shots(name):
    world = SyntheticWorld(20, 128, seed=0, gap=0.8, sep=0.2, spread=0.05, test_size=2000)
    world.calibrate(0.5)
    test = world.test_set()
    zs = world.zero_shot_accuracy(test)
    accs = []
    for seed in (1, 2):
        task = world.task(16, seed=seed, views=4, val="fewshot")
        accs.append(
            methods.create(name, **SANITY[name]).fit(task).score(test.features, test.labels)
        )
    assert sum(accs) / len(accs) > zs + 0.05, (name, accs, zs)
