"""functional.cache_grid_counts (the cache methods' search engine) against brute force."""

import itertools
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from fewclip import functional as F
from fewclip.errors import InvalidValueError


@pytest.fixture(autouse=True)
def _one_thread():
    """These tests run thousands of tiny ops, where a second intra-op thread only adds
    synchronisation (and stalls badly on a shared machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


def _row_group_case(monkeypatch, variant="plain"):
    """203 query rows over 7 classes × 3 keys in 34 cache blocks of 6 rows (float64):
    ``(args, kwargs)`` of ``cache_grid_counts``; ``variant="both"`` adds key weights and an
    extra term over 4 γ."""
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
    return (x, y, keys, labels, base, betas, alphas), dict(
        key_weights=kw, extra=extra, gammas=gammas
    )


def _record_row_groups(monkeypatch):
    """The number of rows of every row group counted from now on."""
    calls = []
    real = F._grid_rows_counts
    monkeypatch.setattr(
        F, "_grid_rows_counts", lambda s, *a, **k: calls.append(s.shape[0]) or real(s, *a, **k)
    )
    return calls


@pytest.mark.parametrize("variant", ["plain", "both"])
def test_cache_grid_counts_row_groups_on_two_threads(monkeypatch, variant):
    """With two intra-op threads the counting stage splits the rows into groups that run in
    parallel Python threads; the counts must not change, and the caller's thread count must be
    restored (also the one new threads start with)."""
    args, kwargs = _row_group_case(monkeypatch, variant)
    assert torch.get_num_threads() == 1
    one = F.cache_grid_counts(*args, **kwargs)
    calls = _record_row_groups(monkeypatch)
    torch.set_num_threads(2)
    two = F.cache_grid_counts(*args, **kwargs)
    assert torch.get_num_threads() == 2
    with ThreadPoolExecutor(1) as pool:  # a fresh thread starts with the caller's count
        assert pool.submit(torch.get_num_threads).result() == 2
    assert sorted(calls) == [101, 102]
    assert torch.equal(two, one)
    assert torch.equal(
        one,
        _brute_counts(*args, kwargs["key_weights"], kwargs["extra"], kwargs["gammas"]),
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


def test_cache_grid_counts_empty_grids_and_mismatched_rows_are_named():
    x, keys = F.l2_normalize(torch.randn(4, 3)), F.l2_normalize(torch.randn(6, 3))
    labels, y, base = torch.arange(3).repeat(2), torch.zeros(4, dtype=torch.long), torch.zeros(4, 3)
    empty = "betas, alphas and gammas: expected at least one value each"
    for grids in (([], [1.0], (0.0,)), ([1.0], [], (0.0,)), ([1.0], [1.0], ())):
        betas, alphas, gammas = grids
        with pytest.raises(InvalidValueError) as e:
            F.cache_grid_counts(x, y, keys, labels, base, betas, alphas, gammas=gammas)
        assert str(e.value) == empty
    with pytest.raises(InvalidValueError) as e:  # 3 query rows against a base of 4
        F.cache_grid_counts(x[:3], y[:3], keys, labels, base, [1.0], [1.0])
    assert str(e.value) == "x_val/y_val: expected 4 rows (as base), found (3, 3) and (3,)"
    with pytest.raises(InvalidValueError) as e:  # the labels alone are short
        F.cache_grid_counts(x, y[:3], keys, labels, base, [1.0], [1.0])
    assert str(e.value) == "x_val/y_val: expected 4 rows (as base), found (4, 3) and (3,)"


def test_cache_grid_counts_one_thread_counts_all_rows_in_one_group(monkeypatch):
    """On one intra-op thread there is one row group (no Python threads), the counts are the
    brute-force ones, and the caller keeps its one thread."""
    args, _ = _row_group_case(monkeypatch)
    calls = _record_row_groups(monkeypatch)
    assert torch.get_num_threads() == 1
    counts = F.cache_grid_counts(*args)
    assert calls == [203]
    assert torch.get_num_threads() == 1
    assert torch.equal(counts, _brute_counts(*args))


def _parallel_keys_and_rows(n_keys, n_rows):
    """Keys and query rows that are all the same unit vector: every affinity ``x·k`` is exactly
    1, so every cache entry ``exp(−β(1 − x·k))`` is exactly 1 at every β and the cache term of a
    class is the (weighted) number of its keys, in any precision."""
    unit = torch.tensor([1.0, 0.0], dtype=torch.float64)
    return unit.expand(n_rows, 2).clone(), unit.expand(n_keys, 2).clone()


def test_cache_grid_counts_float64_is_exact_to_float64_precision():
    """A float64 search counts in float64: margins of 1e-10 and crossing points 1e-12 away from
    a grid value decide as they do in float64 (float32 would tie them or round the grid)."""
    labels = torch.tensor([0, 0, 1, 2])  # cache term per class: 2, 1, 1
    x, keys = _parallel_keys_and_rows(len(labels), 3)
    y = torch.tensor([1, 0, 2])
    base = torch.tensor(
        [
            [-5.0, 1.0 + 1e-10, 1.0],  # beats class 2 by 1e-10 (1.0 in float32: a tie)
            [0.0, 0.1 + 1e-12, -5.0],  # beats class 1 once α > 0.1 + 1e-12: not at α = 0.1
            [-5.0, 0.3 + 1e-12, 0.0],  # beats class 1 once γ > 0.3 + 1e-12: not at γ = 0.3
        ],
        dtype=torch.float64,
    )
    extra = torch.zeros(3, 3, dtype=torch.float64)
    extra[2, 2] = 1.0
    betas, alphas, gammas = [1.0, 2.0, 3.0, 5.0], [0.0, 0.1, 0.2], [0.0, 0.3, 0.6]
    got = F.cache_grid_counts(x, y, keys, labels, base, betas, alphas, extra=extra, gammas=gammas)
    by_alpha = torch.tensor([0, 0, 1]).view(1, 3)  # row 1
    by_gamma = torch.tensor([0, 0, 1]).view(3, 1)  # row 2
    expected = (1 + by_alpha + by_gamma).expand(len(betas), 1, 3, 3)
    assert torch.equal(got, expected)
    assert torch.equal(
        got, _brute_counts(x, y, keys, labels, base, betas, alphas, None, extra, gammas)
    )

    # per-key value weights are applied in float64 too: 0.1 − 1e-12 stays below 0.1
    labels = torch.tensor([0, 1])
    x, keys = _parallel_keys_and_rows(2, 1)
    weights = torch.tensor([[0.1 - 1e-12, 0.0]], dtype=torch.float64)
    base = torch.tensor([[0.0, 0.1]], dtype=torch.float64)
    y = torch.tensor([0])
    got = F.cache_grid_counts(x, y, keys, labels, base, [1.0], [0.0, 1.0, 2.0], key_weights=weights)
    assert got.view(-1).tolist() == [0, 0, 1]


def test_cache_grid_counts_searches_half_precision_in_float32():
    """Float16 inputs (features, base, extra, a given affinity) are searched in float32: the
    counts are those of the same numbers passed as float32."""
    g = torch.Generator().manual_seed(5)
    n, c, d = 60, 5, 8
    labels = torch.arange(c).repeat_interleave(3)
    keys = F.l2_normalize(torch.randn(len(labels), d, generator=g)).half()
    x = F.l2_normalize(torch.randn(n, d, generator=g)).half()
    y = torch.randint(c, (n,), generator=g)
    # logits of both signs near zero: their float16 differences are not all float16 numbers
    base = (2 * torch.randn(n, c, generator=g)).half()
    extra = torch.randn(n, c, generator=g).half()
    grid = dict(
        betas=F.reference_grid(7, 20),
        alphas=F.reference_grid(3, 30),
        gammas=[0.1 * i for i in range(11)],
    )
    for affinity in (None, x @ keys.T):
        half = F.cache_grid_counts(x, y, keys, labels, base, extra=extra, affinity=affinity, **grid)
        single = F.cache_grid_counts(
            x.float(), y, keys.float(), labels, base.float(), extra=extra.float(),
            affinity=None if affinity is None else affinity.float(), **grid,
        )  # fmt: skip
        assert torch.equal(half, single)
        assert 0 < int(single.min()) < int(single.max()) < n  # the grid matters here


def test_cache_grid_counts_rows_counted_in_many_groups(monkeypatch):
    """With a small budget for the margins counted together, one thread counts the rows in
    groups of one cache block each, within chunks of 48 rows; every row is counted once."""
    args, kwargs = _row_group_case(monkeypatch, "both")
    monkeypatch.setattr(F, "_COUNT_BYTES", 1)
    calls = _record_row_groups(monkeypatch)
    row_bytes = 7 * 3 * 8  # 7 classes × 3 keys of float64 affinities
    counts = F.cache_grid_counts(*args, **kwargs, chunk_bytes=48 * row_bytes)
    assert calls == [6] * 33 + [5]
    assert torch.equal(
        counts, _brute_counts(*args, kwargs["key_weights"], kwargs["extra"], kwargs["gammas"])
    )


def test_cache_grid_counts_one_class_is_always_right():
    """With a single class there is no other class to beat: every row counts everywhere."""
    g = torch.Generator().manual_seed(2)
    keys = F.l2_normalize(torch.randn(4, 3, generator=g))
    x = F.l2_normalize(torch.randn(7, 3, generator=g))
    labels, y = torch.zeros(4, dtype=torch.long), torch.zeros(7, dtype=torch.long)
    got = F.cache_grid_counts(
        x, y, keys, labels, torch.randn(7, 1, generator=g), [1.0, 2.0], [0.0, 1.0]
    )
    assert torch.equal(got, torch.full((2, 1, 1, 2), 7))
