"""Edge cases of the functional core: exact error messages, defaults, dtypes and tiny blocks."""

import math
import re
import warnings

import pytest
import torch

from fewclip import functional as F
from fewclip.errors import InvalidValueError


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def _strict_counts(
    x: torch.Tensor,
    y: torch.Tensor,
    keys: torch.Tensor,
    labels: torch.Tensor,
    w: torch.Tensor,
    betas: list[float],
    alphas: list[float],
    scale: float,
) -> list[list[int]]:
    """Tip-Adapter correct counts at every (β, α), one grid point at a time in float64: a row
    counts when its label's logit is strictly above every other class's (ties are wrong)."""
    onehot = torch.nn.functional.one_hot(labels, w.shape[0]).double()
    x, keys, w = x.double(), keys.double(), w.double()
    out = []
    for beta in betas:
        cache = torch.exp(-beta * (1 - x @ keys.T)) @ onehot
        row = []
        for alpha in alphas:
            logits = scale * x @ w.T + alpha * cache
            true = logits.gather(1, y[:, None])[:, 0]
            others = logits.scatter(1, y[:, None], float("-inf")).amax(1)
            row.append(int((true > others).sum()))
        out.append(row)
    return out


def _world(
    seed: int, n: int, c: int, shots: int, d: int = 8
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A small float64 Tip-Adapter world: validation rows, cache keys and text weights."""
    g = torch.Generator().manual_seed(seed)
    means = _unit(torch.randn(c, d, generator=g, dtype=torch.float64))
    labels = torch.arange(c).repeat_interleave(shots)
    keys = _unit(
        means[labels] + 0.6 * torch.randn(len(labels), d, generator=g, dtype=torch.float64)
    )
    y = torch.randint(0, c, (n,), generator=g)
    x = _unit(means[y] + 0.6 * torch.randn(n, d, generator=g, dtype=torch.float64))
    w = _unit(means + 0.9 * torch.randn(c, d, generator=g, dtype=torch.float64))
    return x, y, keys, labels, w


# exact error messages


def test_cache_keys_error_message_names_the_shape() -> None:
    with pytest.raises(InvalidValueError) as excinfo:
        F.cache_keys(torch.zeros(2, 3))
    assert str(excinfo.value) == "view_features: expected shape (V, N, D), found (2, 3)"


def test_class_sum_error_message_names_both_shapes() -> None:
    with pytest.raises(InvalidValueError) as excinfo:
        F.class_sum(torch.zeros(2, 4), torch.zeros(3, dtype=torch.long), 2)
    assert str(excinfo.value) == "labels: expected shape (4,), found (3,)"


def test_psd_cholesky_failure_message() -> None:
    h = torch.tensor([[1e-3, 1e3], [1e3, 1e-3]], dtype=torch.float64)
    with pytest.raises(torch.linalg.LinAlgError) as excinfo:
        F.psd_cholesky(h)
    assert str(excinfo.value) == "could not factorise a positive semi-definite system"


def test_search_tip_error_messages() -> None:
    x, y, keys, labels, w = _world(0, 6, c=3, shots=2)
    message = (
        "search_scale and search_step: expected two entries each (beta, alpha), found "
        "(7,) and (200, 20)"
    )
    with pytest.raises(InvalidValueError, match=f"^{re.escape(message)}$"):
        F.search_tip(x, y, keys, labels, w, search_scale=(7,))
    message = "x_val: expected at least one validation row, found 0"
    with pytest.raises(InvalidValueError, match=f"^{re.escape(message)}$"):
        F.search_tip(x[:0], y[:0], keys, labels, w)


# tip_logits, count_correct, kernel_matmul


def test_tip_logits_with_alpha_one_includes_the_cache_term() -> None:
    x, _, keys, labels, w = _world(1, 5, c=3, shots=2)
    beta = 4.0
    expected = torch.zeros(5, 3, dtype=torch.float64)
    for i in range(5):
        for j in range(3):
            cache = sum(
                math.exp(-beta * (1 - float(x[i] @ keys[m]))) for m in range(6) if labels[m] == j
            )
            expected[i, j] = 100.0 * float(x[i] @ w[j]) + 1.0 * cache
    got = F.tip_logits(x, keys, labels, w, alpha=1.0, beta=beta)
    torch.testing.assert_close(got, expected)


def test_count_correct_is_the_number_of_rows_whose_first_maximum_is_the_label() -> None:
    g = torch.Generator().manual_seed(2)
    logits = torch.randint(0, 3, (40, 4), generator=g).double()  # many ties
    labels = torch.randint(0, 4, (40,), generator=g)
    expected = 0
    for row, label in zip(logits.tolist(), labels.tolist(), strict=True):
        expected += row.index(max(row)) == label
    assert 0 < expected < 40
    assert F.count_correct(logits, labels) == expected


def test_kernel_matmul_tiny_chunks_with_more_rows_than_features() -> None:
    g = torch.Generator().manual_seed(3)
    n, m, d, c = 9, 5, 3, 2
    x = _unit(torch.randn(n, d, generator=g, dtype=torch.float64))
    keys = _unit(torch.randn(m, d, generator=g, dtype=torch.float64))
    v = torch.randn(m, c, generator=g, dtype=torch.float64)
    beta = 3.0
    expected = torch.zeros(n, c, dtype=torch.float64)
    for i in range(n):
        for j in range(m):
            expected[i] += math.exp(-beta * (1 - float(x[i] @ keys[j]))) * v[j]
    # two rows of the (N, M) kernel per chunk: five chunks
    got = F.kernel_matmul(x, keys, v, beta=beta, chunk_bytes=2 * m * 8)
    torch.testing.assert_close(got, expected)


# count_correct_over_alpha


def test_count_correct_over_alpha_without_rows_gives_int64_zeros() -> None:
    got = F.count_correct_over_alpha(
        torch.zeros(0, 3), torch.zeros(2, 0, 3), torch.zeros(0, dtype=torch.long), torch.ones(4)
    )
    assert got.dtype == torch.int64
    assert got.tolist() == [[0] * 4] * 2


def test_count_correct_over_alpha_uses_alphas_in_the_dtype_of_the_logits() -> None:
    """float32 logits with float64 α: a row counts where ``base + α·extra``, evaluated in float32,
    ranks the label strictly first (the α closer to 1 than float32 resolves tie at 1)."""
    base = torch.tensor([[0.0, 1.0]])
    extra = torch.tensor([[1.0, 0.0]])
    labels = torch.tensor([0])
    alphas = torch.tensor([0.5, 1.0, 1 + 2**-30, 1 + 2**-20, 2.0], dtype=torch.float64)
    expected = []
    for a in alphas.float():
        logits = base + a * extra  # float32 arithmetic
        expected.append(int(logits[0, 0] > logits[0, 1]))
    assert expected == [0, 0, 0, 1, 1]
    assert F.count_correct_over_alpha(base, extra, labels, alphas).tolist() == expected


# tip_grid_counts


def _threshold_world(
    beta: float, ds: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """One float64 row whose label wins exactly for α above ``α* = 100·ds / (1 − e^−β)``.

    x = e0 has label 0; class 0's key is x itself (affinity 1), class 1's is orthogonal
    (affinity 0); the text weights give class 1 a zero-shot lead of ``100·ds`` (scale 100).
    """
    x = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    keys = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    w = torch.tensor(
        [[0.0, 0.0, 1.0, 0.0], [ds, 0.0, 0.0, math.sqrt(1 - ds**2)]], dtype=torch.float64
    )
    threshold = 100.0 * ds / (1 - math.exp(-beta))
    return x, torch.tensor([0]), keys, torch.tensor([0, 1]), w, threshold


def test_tip_grid_counts_defaults_and_float64_precision() -> None:
    """With the default scale (100) and float64 inputs, α one part in 10¹² either side of the
    row's threshold gives the brute-force counts, which float32 rounding of β, α or the cache
    sums could not resolve; the counts are int64."""
    x, y, keys, labels, w, threshold = _threshold_world(beta=0.1, ds=0.01)
    betas = [0.1]
    alphas = [threshold * (1 - 1e-12), threshold * (1 + 1e-12)]
    expected = _strict_counts(x, y, keys, labels, w, betas, alphas, scale=100.0)
    assert expected == [[0, 1]]
    got = F.tip_grid_counts(x, y, keys, labels, w, betas, alphas)
    assert got.dtype == torch.int64
    assert got.tolist() == expected


def test_tip_grid_counts_emits_no_warnings() -> None:
    x, y, keys, labels, w = _world(4, 7, c=3, shots=3, d=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = F.tip_grid_counts(x, y, keys, labels, w, [0.5, 2.0], [0.5, 1.5])
    assert [str(item.message) for item in caught] == []
    assert got.tolist() == _strict_counts(x, y, keys, labels, w, [0.5, 2.0], [0.5, 1.5], 100.0)


@pytest.mark.parametrize(
    ("c", "n_keys", "block_bytes"),
    [
        (2, 4, 320),  # 10-row blocks, β groups of 2 (the last one short)
        (16, 2, 160),  # more classes than keys (14 have none): one β per group
    ],
    ids=["groups-of-2", "one-per-group"],
)
def test_tip_grid_counts_tiny_blocks_equal_brute_force(
    monkeypatch: pytest.MonkeyPatch, c: int, n_keys: int, block_bytes: int
) -> None:
    """Nine β in groups bounded by a tiny block budget give the brute-force counts."""
    x, y, keys, labels, w = _world(5, 10, c=c, shots=max(1, n_keys // c))
    keys, labels = keys[:n_keys], labels[:n_keys]
    monkeypatch.setattr(F, "_BLOCK_BYTES", block_bytes)
    betas = [0.5 + 0.75 * i for i in range(9)]
    alphas = [0.0, 0.3, 1.0, 4.0, 20.0]
    got = F.tip_grid_counts(x, y, keys, labels, w, betas, alphas, scale=10.0)
    assert got.tolist() == _strict_counts(x, y, keys, labels, w, betas, alphas, scale=10.0)


# search_tip


def _reference_search_scaled(
    x: torch.Tensor,
    y: torch.Tensor,
    keys: torch.Tensor,
    labels: torch.Tensor,
    w: torch.Tensor,
    scale: float,
    search_scale: tuple[float, float],
    search_step: tuple[int, int],
) -> tuple[float, float, float]:
    """Tip-Adapter's search_hp loop (in the inputs' dtype) with the zero-shot scale as given."""
    betas = [i * (search_scale[0] - 0.1) / search_step[0] + 0.1 for i in range(search_step[0])]
    alphas = [i * (search_scale[1] - 0.1) / search_step[1] + 0.1 for i in range(search_step[1])]
    values = torch.nn.functional.one_hot(labels, w.shape[0]).to(x.dtype)
    best = (0.0, 0.0, 0.0)
    for beta in betas:
        for alpha in alphas:
            cache = ((-1) * (beta - beta * (x @ keys.T))).exp() @ values
            logits = scale * x @ w.T + cache * alpha
            acc = 100.0 * float((logits.argmax(1) == y).sum()) / len(y)
            if acc > best[2]:
                best = (beta, alpha, acc)
    return best


def test_search_tip_half_precision_uses_the_given_scale() -> None:
    x, y, keys, labels, w = (
        t.half() if t.is_floating_point() else t for t in _world(0, 30, c=5, shots=4, d=12)
    )
    ref = _reference_search_scaled(x, y, keys, labels, w, 10.0, (7.0, 3.0), (12, 6))
    ref_default = _reference_search_scaled(x, y, keys, labels, w, 100.0, (7.0, 3.0), (12, 6))
    assert ref[2] > 0
    assert ref != ref_default  # the scale matters here
    assert F.search_tip(x, y, keys, labels, w, search_step=(12, 6), scale=10.0) == ref


@pytest.mark.parametrize("n_classes", [3, 4])  # 4: the last class has no key
def test_class_sum_traced_serves_any_batch_size(n_classes: int) -> None:
    """Under ``torch.jit.trace`` (what ``fewclip.export`` records) the class sum of uneven,
    unsorted labels is the product with the one-hot matrix, so the recorded graph serves a
    batch of another size with the same sums as the eager ``index_add``."""
    labels = torch.tensor([2, 0, 1, 2, 2, 0])
    with warnings.catch_warnings():  # trace's deprecation and its data-dependent-branch notes
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(lambda v: F.class_sum(v, labels, n_classes), torch.rand(4, 6))
    for rows in (1, 4, 9):
        values = torch.rand(rows, 6)
        out = traced(values)
        assert out.dtype == values.dtype
        expected = torch.stack(
            [values[:, labels == c].sum(dim=1) for c in range(n_classes)], dim=1
        )  # by definition
        torch.testing.assert_close(out, expected)
        torch.testing.assert_close(out, F.class_sum(values, labels, n_classes))


@pytest.mark.parametrize(
    ("values", "step"),
    [
        ([1.0, 2.0, 3.0], 1.0),  # three values are enough
        ([0.5, 2.0, 3.5, 5.0], 1.5),
        ([1.0, 2.0], None),  # two are not a sequence worth a multiplicative update
        ([3.0, 2.0, 1.0], None),  # decreasing
        ([2.0, 2.0, 2.0], None),  # no step
        ([1.0, 2.0, 4.0], None),
        # within the relative tolerance 1e-9·max(|first|, |last|, 1)
        ([1000.0, 2000.0000025, 3000.0], 1000.0),
        ([-3000.0, -2000.0000025, -1000.0], 1000.0),
        ([0.0, 1e-3, 2e-3 + 5e-10], (2e-3 + 5e-10) / 2),  # 2.5e-10 off the line
        ([0.0, 1e-3, 2e-3 + 3e-9], None),  # 1.5e-9 off the line: beyond 1e-9
    ],
)
def test_arithmetic_step_of_the_beta_grid(values: list[float], step: float | None) -> None:
    """The β grids the searches take the multiplicative path for: increasing arithmetic
    sequences of at least three values, up to a relative 1e-9."""
    got = F._arithmetic_step(values)
    if step is None:
        assert got is None
    else:
        assert got == pytest.approx(step, rel=1e-12)
