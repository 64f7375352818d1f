"""Property-based tests (Hypothesis) for the functional core, the few-shot draws and a few
method-level contracts.

Every property compares against an independent oracle (a plain loop, a brute-force grid, a
re-ordered input) on many small random problems. Settings are derandomized so CI sees the same
examples every run; examples are kept small so the file runs in well under a minute on 2 cores.
"""

from __future__ import annotations

import functools
import itertools
import random
import tempfile
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fewclip import functional as F
from fewclip import methods, sampling
from fewclip.testing.conformance import make_task

_SETTINGS = {
    "deadline": None,
    "derandomize": True,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.filter_too_much],
}
_TIE = 1e-9  # margins closer to zero than this are float-rounding coin flips: dropped


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Thousands of tiny ops: a second intra-op thread only adds synchronisation."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- 1. grid searches against brute force ---------------------------------------------------------


@st.composite
def cache_problems(draw):
    """A small float64 cache-classifier problem, with deliberate duplicates and uneven classes.

    Returns x_val (N, D), y_val (N,), keys (K, D), labels (K,), text_weights (C, D), all
    L2-normalised where the methods normalise. Validation rows are drawn from a pool of
    ``n_unique`` rows, so duplicated rows (and therefore tied grid counts) are common.
    """
    seed = draw(st.integers(0, 2**31 - 1))
    c = draw(st.integers(2, 4))
    d = draw(st.integers(2, 5))
    per_class = draw(st.lists(st.integers(1, 3), min_size=c, max_size=c))
    shuffle_keys = draw(st.booleans())
    dup_key = draw(st.booleans())  # one key repeated under another class
    n_val = draw(st.integers(1, 6))
    n_unique = draw(st.integers(1, n_val))
    rows = draw(st.lists(st.integers(0, n_unique - 1), min_size=n_val, max_size=n_val))
    g = _gen(seed)
    labels = torch.repeat_interleave(torch.arange(c), torch.tensor(per_class))
    if shuffle_keys:
        labels = labels[torch.randperm(len(labels), generator=g)]
    keys = F.l2_normalize(torch.randn(len(labels), d, generator=g, dtype=torch.float64))
    if dup_key and len(labels) > 1:
        keys[-1] = keys[0]
    pool = F.l2_normalize(torch.randn(n_unique, d, generator=g, dtype=torch.float64))
    pool_y = torch.randint(c, (n_unique,), generator=g)
    x_val, y_val = pool[rows], pool_y[rows]
    text = F.l2_normalize(torch.randn(c, d, generator=g, dtype=torch.float64))
    return x_val, y_val, keys, labels, text


def _brute_counts(
    x, y, keys, labels, base, betas, alphas, key_weights=None, extra=None, gammas=(0.0,)
):
    """Every grid point separately: dense one-hot values, ``true > max(others)`` (ties wrong).

    Returns the (nβ, G, nγ, nα) counts and the smallest |true − best other| seen anywhere.
    """
    c = base.shape[1]
    onehot = torch.nn.functional.one_hot(labels, c).to(x.dtype)
    weights = torch.ones(1, len(labels), dtype=x.dtype) if key_weights is None else key_weights
    sim = x @ keys.T
    counts = torch.zeros(len(betas), len(weights), len(gammas), len(alphas), dtype=torch.long)
    closest = float("inf")
    for bi, beta in enumerate(betas):
        aff = torch.exp(-beta * (1.0 - sim))
        for wi, w in enumerate(weights):
            cache = aff @ (onehot * w[:, None])
            for gi, gamma in enumerate(gammas):
                for ai, alpha in enumerate(alphas):
                    logits = base + alpha * cache
                    if extra is not None:
                        logits = logits + gamma * extra
                    true = logits.gather(1, y[:, None])[:, 0]
                    others = logits.scatter(1, y[:, None], float("-inf")).amax(1)
                    counts[bi, wi, gi, ai] = int((true > others).sum())
                    closest = min(closest, float((true - others).abs().min()))
    return counts, closest


def _brute_search(x, y, keys, labels, text, search_scale, search_step, scale):
    """The reference loop: β outer, α inner, strict ``>`` keeps the first best point.

    Starts below any count, so a grid where nothing is correct returns its first point (as
    ``search_tip`` documents; the reference itself would return (0, 0) there).
    """
    betas = F.reference_grid(search_scale[0], search_step[0])
    alphas = F.reference_grid(search_scale[1], search_step[1])
    onehot = torch.nn.functional.one_hot(labels, text.shape[0]).to(x.dtype)
    best, best_beta, best_alpha, closest = -1, None, None, float("inf")
    for beta in betas:
        for alpha in alphas:
            logits = scale * x @ text.T + alpha * torch.exp(-beta * (1 - x @ keys.T)) @ onehot
            true = logits.gather(1, y[:, None])[:, 0]
            others = logits.scatter(1, y[:, None], float("-inf")).amax(1)
            closest = min(closest, float((true - others).abs().min()))
            correct = int((true > others).sum())
            if correct > best:
                best, best_beta, best_alpha = correct, beta, alpha
    return best_beta, best_alpha, 100.0 * best / x.shape[0], closest


@settings(max_examples=300, **_SETTINGS)
@given(
    problem=cache_problems(),
    scale_beta=st.floats(0.2, 12.0),
    scale_alpha=st.floats(0.2, 6.0),
    step_beta=st.integers(1, 20),
    step_alpha=st.integers(1, 8),
    scale=st.sampled_from([1.0, 5.0, 20.0, 100.0]),
)
def test_search_tip_equals_reference_loop(
    problem, scale_beta, scale_alpha, step_beta, step_alpha, scale
):
    """search_tip returns the (β, α, accuracy) of the reference double loop (β outer, α inner,
    strict ``>``: among tied counts the first visited point wins)."""
    x, y, keys, labels, text = problem
    scales, steps = (scale_beta, scale_alpha), (step_beta, step_alpha)
    beta, alpha, acc, closest = _brute_search(x, y, keys, labels, text, scales, steps, scale)
    assume(closest > _TIE)
    got = F.search_tip(
        x, y, keys, labels, text, search_scale=scales, search_step=steps, scale=scale
    )
    assert got == (beta, alpha, acc)


@st.composite
def grids(draw):
    """β values (arithmetic, long enough to cross the re-anchoring every 16 steps, or free
    positive values) and non-negative α values (0 included)."""
    if draw(st.booleans()):
        start = draw(st.floats(0.1, 5.0))
        step = draw(st.floats(0.05, 1.0))
        betas = [start + i * step for i in range(draw(st.integers(1, 20)))]
    else:
        betas = draw(st.lists(st.floats(0.1, 12.0), min_size=1, max_size=6))
    alphas = draw(st.lists(st.floats(0.0, 5.0), min_size=1, max_size=6))
    return betas, alphas


@settings(max_examples=200, **_SETTINGS)
@given(
    problem=cache_problems(),
    grid=grids(),
    scale=st.sampled_from([1.0, 10.0, 100.0]),
    n_weights=st.sampled_from([None, 1, 2]),
    gammas=st.sampled_from([None, (0.0,), (0.5, 2.0)]),
    pass_affinity=st.booleans(),
    tiny_chunks=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_cache_grid_counts_equal_brute_force(
    problem, grid, scale, n_weights, gammas, pass_affinity, tiny_chunks, seed
):
    """cache_grid_counts gives, at every (β, weight variant, γ, α), the number of rows whose true
    logit strictly beats every other class, as evaluating each grid point separately does."""
    x, y, keys, labels, text = problem
    betas, alphas = grid
    g = _gen(seed)
    base = scale * x @ text.T
    kw = None if n_weights is None else 2 * torch.rand(n_weights, len(labels), generator=g).double()
    extra = None if gammas is None else torch.randn(base.shape, generator=g).double()
    gam = (0.0,) if gammas is None else gammas
    want, closest = _brute_counts(x, y, keys, labels, base, betas, alphas, kw, extra, gam)
    assume(closest > _TIE)
    got = F.cache_grid_counts(
        x,
        y,
        keys,
        labels,
        base,
        betas,
        alphas,
        key_weights=kw,
        extra=extra,
        gammas=gam,
        affinity=x @ keys.T if pass_affinity else None,
        chunk_bytes=1 if tiny_chunks else 256 * 2**20,
    )
    assert torch.equal(got, want)


@settings(max_examples=150, **_SETTINGS)
@given(
    problem=cache_problems(),
    grid=grids(),
    scale=st.sampled_from([1.0, 10.0, 100.0]),
    tiny_chunks=st.booleans(),
)
def test_tip_grid_counts_equal_brute_force(problem, grid, scale, tiny_chunks):
    """tip_grid_counts (the half-precision search path, here in float64) counts the correct rows
    at every (β, α) exactly as evaluating each grid point separately."""
    x, y, keys, labels, text = problem
    betas, alphas = grid
    want, closest = _brute_counts(x, y, keys, labels, scale * x @ text.T, betas, alphas)
    assume(closest > _TIE)
    got = F.tip_grid_counts(
        x,
        y,
        keys,
        labels,
        text,
        betas,
        alphas,
        scale=scale,
        chunk_bytes=1 if tiny_chunks else 256 * 2**20,
    )
    assert torch.equal(got, want[:, 0, 0])


_dyadic = st.integers(0, 16).map(lambda i: i / 4)  # α, γ on a grid of quarters: exact products


@settings(max_examples=150, **_SETTINGS)
@given(
    n=st.integers(0, 5),
    c=st.integers(2, 4),
    batch=st.lists(st.integers(1, 2), max_size=1),
    alphas=st.lists(_dyadic, min_size=1, max_size=6),
    seed=st.integers(0, 2**31 - 1),
)
def test_count_correct_over_alpha_exact_with_ties(n, c, batch, alphas, seed):
    """count_correct_over_alpha is exact: on integer logits and quarter-step α (every
    ``base + α·extra`` exact in float64, so exact ties are frequent) it counts, for every α, the
    rows whose true class strictly beats every other class (a tie counts as wrong)."""
    g = _gen(seed)
    base = torch.randint(-4, 5, (n, c), generator=g).double()
    extra = torch.randint(-3, 4, (*batch, n, c), generator=g).double()
    y = torch.randint(c, (n,), generator=g)
    got = F.count_correct_over_alpha(base, extra, y, torch.tensor(alphas, dtype=torch.float64))
    want = torch.zeros(*batch, len(alphas), dtype=torch.long)
    for b in itertools.product(*(range(s) for s in batch)):
        for ai, alpha in enumerate(alphas):
            for i in range(n):
                row = base[i] + alpha * extra[b][i]
                others = [row[j] for j in range(c) if j != int(y[i])]
                want[b][ai] += int(all(row[y[i]] > o for o in others))
    assert torch.equal(got, want)


@settings(max_examples=100, **_SETTINGS)
@given(
    problem=cache_problems(),
    grid=grids(),
    n_weights=st.sampled_from([None, 1, 2]),
    gammas=st.sampled_from([None, (0.0,), (0.5, 1.25)]),
    seed=st.integers(0, 2**31 - 1),
)
def test_cache_grid_counts_exact_with_ties(problem, grid, n_weights, gammas, seed):
    """cache_grid_counts is exact, ties included: with an affinity of 1 everywhere (so
    exp(β(A − 1)) = 1 exactly), integer base and extra logits, half-integer key weights and
    quarter-step α, γ, every logit is exact in float64; the counts equal brute force, where a row
    whose true class ties another class counts as wrong."""
    x, y, keys, labels, _ = problem
    betas = grid[0]
    g = _gen(seed)
    c = int(labels.max()) + 1
    alphas = [float(i) / 4 for i in torch.randint(0, 17, (4,), generator=g)]
    base = torch.randint(-3, 4, (len(y), c), generator=g).double()
    kw = None
    if n_weights is not None:
        kw = torch.randint(0, 5, (n_weights, len(labels)), generator=g).double() / 2
    extra = None if gammas is None else torch.randint(-2, 3, base.shape, generator=g).double()
    gam = (0.0,) if gammas is None else gammas
    ones = torch.ones(len(y), len(labels), dtype=torch.float64)
    want, _ = _brute_counts(
        ones,
        y,
        torch.eye(len(labels), dtype=torch.float64),
        labels,
        base,
        betas,
        alphas,
        kw,
        extra,
        gam,
    )
    got = F.cache_grid_counts(
        x,
        y,
        keys,
        labels,
        base,
        betas,
        alphas,
        key_weights=kw,
        extra=extra,
        gammas=gam,
        affinity=ones,
    )
    assert torch.equal(got, want)


@settings(max_examples=300, **_SETTINGS)
@given(
    n=st.integers(1, 4),
    c=st.integers(2, 4),
    n_slices=st.integers(1, 3),
    n_var=st.integers(1, 2),
    alphas=st.lists(_dyadic, min_size=1, max_size=5),
    gammas=st.one_of(st.none(), st.lists(_dyadic, min_size=1, max_size=7)),
    seed=st.integers(0, 2**31 - 1),
)
def test_interval_counts_exact_on_integer_margins(n, c, n_slices, n_var, alphas, gammas, seed):
    """The engine of the cache searches counts, for every (slice, variant, γ, α), the rows whose
    margin ``d_base + α·d_cache + γ·d_extra`` against every other class is strictly positive.
    Integer margins in [−2, 2] and quarter-step α, γ make every margin exact and zero slopes,
    zero margins and classes that win on only part of the grid frequent, so each pruning rule
    and each bound (a slope of 0, a margin of 0 at a corner) is reached."""
    g = _gen(seed)
    labels = torch.randint(c, (n,), generator=g)
    d_base = torch.randint(-2, 3, (n, c), generator=g).double()
    d_cache = torch.randint(-2, 3, (n_slices, n_var, n, c), generator=g).double()
    d_extra = None if gammas is None else torch.randint(-2, 3, (n, c), generator=g).double()
    gam = [0.0] if gammas is None else gammas
    for t in (d_base, d_cache, d_extra):  # a margin against the label itself is 0
        if t is not None:
            t.scatter_(-1, labels.view(n, 1).expand_as(t[..., :1]), 0.0)
    got = F._interval_counts(
        d_base,
        d_cache,
        d_extra,
        labels,
        torch.tensor(alphas, dtype=torch.float64),
        torch.tensor(gam, dtype=torch.float64),
    )
    want = torch.zeros(n_slices, n_var, len(gam), len(alphas), dtype=torch.long)
    others = torch.ones(n, c, dtype=torch.bool).scatter_(1, labels.view(n, 1), False)
    for b, v, (gi, gamma), (ai, alpha) in itertools.product(
        range(n_slices), range(n_var), enumerate(gam), enumerate(alphas)
    ):
        margin = d_base + alpha * d_cache[b, v]
        if d_extra is not None:
            margin = margin + gamma * d_extra
        want[b, v, gi, ai] = int(((margin > 0) | ~others).all(dim=1).sum())
    assert torch.equal(got, want)


# -- 2. few-shot draws ------------------------------------------------------------------------


@st.composite
def label_lists(draw, min_count=1, max_count=9):
    """Labels of a small split: 1–5 classes of ``min_count``–``max_count`` items each, ints or
    strings, in a random order (so first appearance ≠ sorted order)."""
    n_classes = draw(st.integers(1, 5))
    counts = draw(
        st.lists(st.integers(min_count, max_count), min_size=n_classes, max_size=n_classes)
    )
    names = draw(st.sampled_from([list(range(n_classes)), [f"c{i}" for i in range(n_classes)]]))
    labels = [names[i] for i, k in enumerate(counts) for _ in range(k)]
    return draw(st.permutations(labels))


def _first_appearance(labels):
    return list(dict.fromkeys(labels))


def _assert_grouped(labels, indices):
    """The chosen indices come class by class, classes in order of first appearance."""
    got = [labels[i] for i in indices]
    order = [y for y in _first_appearance(labels) if y in set(got)]
    counts = Counter(got)
    assert got == [y for y in order for _ in range(counts[y])]


_seeds = st.integers(0, 2**32)


@settings(max_examples=300, **_SETTINGS)
@given(labels=label_lists(), shots=st.integers(1, 6), seed=_seeds, repeat=st.booleans())
def test_sample_few_shot(labels, shots, seed, repeat):
    """sample_few_shot: K rows per class (all of a smaller class, or K with replacement under
    ``repeat``), each from its own class, without repeats unless needed, class by class in order
    of first appearance; deterministic under a seed; Python's global random state untouched;
    ``draw_support`` gives the same draw or a NotEnoughImagesError exactly when a class is short."""
    state = random.getstate()
    support = sampling.sample_few_shot(labels, shots, seed=seed, repeat=repeat)
    assert random.getstate() == state
    assert sampling.sample_few_shot(labels, shots, seed=seed, repeat=repeat) == support
    sizes = Counter(labels)
    got = Counter(labels[i] for i in support)
    for y, n in sizes.items():
        assert got[y] == (shots if repeat else min(shots, n))
        chosen = [i for i in support if labels[i] == y]
        if n >= shots or not repeat:
            assert len(set(chosen)) == len(chosen)
        else:
            assert set(chosen) <= {i for i in range(len(labels)) if labels[i] == y}
    _assert_grouped(labels, support)
    if all(n >= shots for n in sizes.values()):  # repeat only matters for short classes
        assert sampling.sample_few_shot(labels, shots, seed=seed, repeat=not repeat) == support
    if repeat or all(n >= shots for n in sizes.values()):
        assert sampling.draw_support(labels, shots, seed=seed, repeat=repeat) == support
    else:
        with pytest.raises(sampling.NotEnoughImagesError):
            sampling.draw_support(labels, shots, seed=seed)
        assert sampling.draw_support(labels, shots, seed=seed, allow_fewer=True) == support


@settings(max_examples=300, **_SETTINGS)
@given(
    labels=label_lists(),
    shots=st.integers(1, 6),
    val_shots=st.integers(1, 5),
    seed=_seeds,
    repeat=st.booleans(),
)
def test_fewshot_val_draw(labels, shots, val_shots, seed, repeat):
    """fewshot-val draw: the support is exactly ``sample_few_shot``'s (the promised nesting of
    support inside the fewshot-val draw); validation rows are distinct, disjoint from the support,
    of their own class, ``min(K, val_shots)`` per class (or every remaining row), class by class;
    deterministic; ``draw_fewshot_val`` agrees or raises exactly when a class cannot give
    K + min(K, val_shots) distinct rows."""
    support, val = sampling.sample_fewshot_val(
        labels, shots, seed=seed, val_shots=val_shots, repeat=repeat
    )
    again = sampling.sample_fewshot_val(
        labels, shots, seed=seed, val_shots=val_shots, repeat=repeat
    )
    assert again == (support, val)
    assert support == sampling.sample_few_shot(labels, shots, seed=seed, repeat=repeat)
    assert not set(support) & set(val)
    assert len(set(val)) == len(val)
    k = min(shots, val_shots)
    sizes = Counter(labels)
    per_val = Counter(labels[i] for i in val)
    for y, n in sizes.items():
        rest = n - len({i for i in support if labels[i] == y})
        assert per_val[y] == min(k, rest)
    _assert_grouped(labels, val)
    fits = all(n >= shots + k for n in sizes.values())
    if fits:
        assert all(per_val[y] == k for y in sizes)
        assert all(Counter(labels[i] for i in support)[y] == shots for y in sizes)
        got = sampling.draw_fewshot_val(
            labels, shots, seed=seed, val_shots=val_shots, repeat=repeat
        )
        assert got == (support, val)
    else:
        with pytest.raises(sampling.NotEnoughImagesError):
            sampling.draw_fewshot_val(labels, shots, seed=seed, val_shots=val_shots, repeat=repeat)
    if not repeat:
        got = sampling.draw_fewshot_val(
            labels, shots, seed=seed, val_shots=val_shots, allow_fewer=True
        )
        assert got == (support, val)


@settings(max_examples=200, **_SETTINGS)
@given(data=st.data(), shots=st.integers(1, 6), seed=_seeds)
def test_coop_draw(data, shots, seed):
    """CoOp draw: the train indices are exactly ``sample_few_shot``'s; ``min(K, 4)`` validation
    rows per class (all of a smaller class), distinct, of their own class, class by class;
    deterministic; ``draw_coop`` agrees or raises exactly when a split has a short class."""
    train = data.draw(label_lists(), label="train")
    classes = sorted(set(train), key=str)
    counts = data.draw(
        st.lists(st.integers(1, 6), min_size=len(classes), max_size=len(classes)), label="val"
    )
    val_labels = data.draw(
        st.permutations([y for y, k in zip(classes, counts, strict=True) for _ in range(k)])
    )
    tr, va = sampling.sample_coop(train, val_labels, shots, seed=seed)
    assert sampling.sample_coop(train, val_labels, shots, seed=seed) == (tr, va)
    assert tr == sampling.sample_few_shot(train, shots, seed=seed)
    assert len(set(va)) == len(va)
    got = Counter(val_labels[i] for i in va)
    for y, n in Counter(val_labels).items():
        assert got[y] == min(shots, 4, n)
    _assert_grouped(val_labels, va)
    ok = all(n >= shots for n in Counter(train).values()) and all(
        n >= min(shots, 4) for n in Counter(val_labels).values()
    )
    if ok:
        assert sampling.draw_coop(train, val_labels, shots, seed=seed) == (tr, va)
    else:
        with pytest.raises(sampling.NotEnoughImagesError):
            sampling.draw_coop(train, val_labels, shots, seed=seed)
    assert sampling.draw_coop(train, val_labels, shots, seed=seed, allow_fewer=True) == (tr, va)


@settings(max_examples=200, **_SETTINGS)
@given(
    labels=label_lists(max_count=14),
    val_shots=st.sampled_from([None, 1, 2, 4]),
    seed=_seeds,
)
def test_draw_all(labels, val_shots, seed):
    """shots=ALL: support and validation partition the split (disjoint, together every row), the
    support in input order, ``all_val_count(n)`` validation rows per class; deterministic; a class
    of fewer than five rows raises when a validation set is asked for."""
    sizes = Counter(labels)
    if val_shots is not None and any(n < sampling.VAL_EVERY for n in sizes.values()):
        with pytest.raises(sampling.NotEnoughImagesError):
            sampling.draw_all(labels, seed=seed, val_shots=val_shots)
        return
    support, val = sampling.draw_all(labels, seed=seed, val_shots=val_shots)
    assert sampling.draw_all(labels, seed=seed, val_shots=val_shots) == (support, val)
    assert not set(support) & set(val)
    assert sorted(support + val) == list(range(len(labels)))
    assert support == sorted(support)
    per_val = Counter(labels[i] for i in val)
    for y, n in sizes.items():
        assert per_val[y] == (0 if val_shots is None else sampling.all_val_count(n, val_shots))


# -- 3.–5. classifier construction and class sums ------------------------------------------------


@settings(max_examples=100, **_SETTINGS)
@given(
    c=st.integers(1, 4),
    t=st.integers(1, 5),
    d=st.integers(2, 6),
    seed=st.integers(0, 2**31 - 1),
)
def test_text_classifier_invariances(c, t, d, seed):
    """text_classifier (C, T, D) → (C, D): unit-norm rows, unchanged by re-ordering the T prompts
    and by rescaling each prompt embedding by its own positive factor."""
    g = _gen(seed)
    emb = torch.randn(c, t, d, generator=g, dtype=torch.float64)
    assume(float(F.l2_normalize(emb).mean(dim=1).norm(dim=-1).min()) > 1e-3)
    w = F.text_classifier(emb)
    assert w.shape == (c, d)
    torch.testing.assert_close(w.norm(dim=-1), torch.ones(c, dtype=torch.float64))
    perm = torch.randperm(t, generator=g)
    factors = torch.exp(6 * torch.rand(c, t, 1, generator=g, dtype=torch.float64) - 3)
    torch.testing.assert_close(F.text_classifier(emb[:, perm]), w, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(F.text_classifier(emb * factors), w, rtol=1e-10, atol=1e-12)


@settings(max_examples=100, **_SETTINGS)
@given(
    v=st.integers(1, 5),
    n=st.integers(1, 6),
    d=st.integers(2, 6),
    seed=st.integers(0, 2**31 - 1),
)
def test_cache_keys_invariances(v, n, d, seed):
    """cache_keys (V, N, D) → (N, D): unit-norm rows, unchanged by re-ordering the views and by a
    common positive rescaling, and equal to the normalised *sum of raw views* (the raw mean is
    normalised, not the mean of normalised views)."""
    g = _gen(seed)
    views = torch.randn(v, n, d, generator=g, dtype=torch.float64)
    views = views * torch.exp(2 * torch.rand(v, n, 1, generator=g, dtype=torch.float64))
    assume(float(views.mean(dim=0).norm(dim=-1).min()) > 1e-3)
    keys = F.cache_keys(views)
    assert keys.shape == (n, d)
    torch.testing.assert_close(keys.norm(dim=-1), torch.ones(n, dtype=torch.float64))
    perm = torch.randperm(v, generator=g)
    torch.testing.assert_close(F.cache_keys(views[perm]), keys, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(F.cache_keys(3.7 * views), keys, rtol=1e-10, atol=1e-12)
    want = views.sum(0) / views.sum(0).norm(dim=-1, keepdim=True)
    torch.testing.assert_close(keys, want, rtol=1e-10, atol=1e-12)


@settings(max_examples=200, **_SETTINGS)
@given(
    n_classes=st.integers(1, 5),
    per=st.integers(0, 4),
    layout=st.sampled_from(["blocks", "sorted-uneven", "shuffled", "shuffled-blocks"]),
    lead=st.lists(st.integers(0, 3), max_size=2),
    seed=st.integers(0, 2**31 - 1),
)
def test_class_sum_equals_loop(n_classes, per, layout, lead, seed):
    """class_sum(values, labels, C)[..., c] is the sum of values[..., k] over keys k labelled c
    (zero for a class with no key), for equal contiguous blocks (the reshape fast path), sorted
    uneven, and shuffled labels. Integer-valued floats make every sum exact."""
    g = _gen(seed)
    if layout in ("blocks", "shuffled-blocks"):
        labels = torch.arange(n_classes).repeat_interleave(per)
    else:
        k = int(torch.randint(0, n_classes * per + 3, (), generator=g))
        labels = torch.randint(n_classes, (k,), generator=g)
        if layout == "sorted-uneven":
            labels = labels.sort().values
    if layout.startswith("shuffled"):
        labels = labels[torch.randperm(len(labels), generator=g)]
    values = torch.randint(-50, 50, (*lead, len(labels)), generator=g).double()
    got = F.class_sum(values, labels, n_classes)
    want = torch.zeros(*lead, n_classes, dtype=torch.float64)
    for k, y in enumerate(labels.tolist()):
        want[..., y] += values[..., k]
    assert torch.equal(got, want)


# -- 6.–7. methods: blocked logits, save → load --------------------------------------------------

_BLOCK_METHODS = ["zero-shot", "tip-adapter", "gda", "proker"]


@functools.cache
def _fitted(name: str):
    return methods.create(name, **methods.get(name).quick_params).fit(make_task())


@settings(max_examples=60, **_SETTINGS)
@given(
    name=st.sampled_from(_BLOCK_METHODS),
    n=st.integers(1, 12),
    cuts=st.lists(st.integers(1, 11), max_size=4, unique=True),
    shuffle=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_blocked_logits_equal_one_block(name, n, cuts, shuffle, seed):
    """A fitted method's logits of x equal the concatenation of its logits of consecutive row
    blocks of x (rtol 1e-5), and logits of permuted rows are the permuted logits."""
    g = _gen(seed)
    x = 3 * torch.randn(n, 16, generator=g)
    m = _fitted(name)
    whole = m.logits(x)
    bounds = [0, *sorted(c for c in cuts if c < n), n]
    parts = torch.cat([m.logits(x[a:b]) for a, b in itertools.pairwise(bounds)])
    torch.testing.assert_close(parts, whole, rtol=1e-5, atol=1e-5)
    if shuffle:
        perm = torch.randperm(n, generator=g)
        torch.testing.assert_close(m.logits(x[perm]), whole[perm], rtol=1e-5, atol=1e-5)


def _assert_round_trip(m):
    x = 3 * torch.randn(7, 16, generator=_gen(5))
    with tempfile.TemporaryDirectory() as tmp:
        loaded = methods.load(m.save(Path(tmp) / "m"))
    assert type(loaded) is type(m)
    assert loaded.get_params() == m.get_params()
    for attr in type(m)._state_values:
        assert getattr(loaded, attr) == getattr(m, attr)
    assert torch.equal(loaded.logits(x), m.logits(x))


_positive = st.floats(1e-4, 1e3, allow_nan=False, allow_infinity=False)


@settings(max_examples=25, **_SETTINGS)
@given(alpha=st.floats(0.0, 50.0), beta=_positive, seed=st.integers(0, 2**31 - 1))
def test_tip_adapter_save_load_round_trip(alpha, beta, seed):
    """Tip-Adapter with arbitrary fixed (α, β): save → load gives bit-identical logits, equal
    params and equal fitted values."""
    m = methods.create("tip-adapter", alpha=alpha, beta=beta, search=False, seed=seed)
    _assert_round_trip(m.fit(make_task()))


@settings(max_examples=25, **_SETTINGS)
@given(alpha=_positive, use_views=st.booleans())
def test_gda_save_load_round_trip(alpha, use_views):
    """GDA with an arbitrary fixed shrinkage α: save → load gives bit-identical logits, equal
    params and equal fitted values."""
    _assert_round_trip(methods.create("gda", alpha=alpha, use_views=use_views).fit(make_task()))


@settings(max_examples=15, **_SETTINGS)
@given(
    init_norm=st.floats(0.1, 50.0),
    epochs=st.integers(1, 3),
    lr=st.floats(1e-3, 1.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_zs_lp_save_load_round_trip(init_norm, epochs, lr, seed):
    """ZS-LP after a few epochs with arbitrary init_norm, lr and seed: save → load gives
    bit-identical logits and equal params."""
    m = methods.create("zs-lp", init_norm=init_norm, epochs=epochs, lr=lr, seed=seed)
    _assert_round_trip(m.fit(make_task()))
