"""The functional core against independent float64 computations and the literal reference loop."""

import warnings

import pytest
import torch

from fewclip import functional as F


def _unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def _reference_search(x, y, keys, labels, w, scale_, step):
    """Tip-Adapter's search_hp, literally: β outer, α inner, dense one-hot values, strict >."""
    betas = [i * (scale_[0] - 0.1) / step[0] + 0.1 for i in range(step[0])]
    alphas = [i * (scale_[1] - 0.1) / step[1] + 0.1 for i in range(step[1])]
    values = torch.nn.functional.one_hot(labels, w.shape[0]).to(x.dtype)
    best_acc, best_beta, best_alpha = 0.0, 0.0, 0.0
    for beta in betas:
        for alpha in alphas:
            affinity = x @ keys.T
            cache_logits = ((-1) * (beta - beta * affinity)).exp() @ values
            clip_logits = 100.0 * x @ w.T
            logits = clip_logits + cache_logits * alpha
            acc = 100.0 * float((logits.argmax(1) == y).sum()) / len(y)
            if acc > best_acc:
                best_acc, best_beta, best_alpha = acc, beta, alpha
    return best_beta, best_alpha, best_acc


def test_text_classifier_matches_loop():
    torch.manual_seed(0)
    emb = torch.randn(5, 3, 8, dtype=torch.float64)
    expected = []
    for c in range(5):
        prompts = [emb[c, t] / emb[c, t].norm() for t in range(3)]
        mean = sum(prompts) / 3
        expected.append(mean / mean.norm())
    torch.testing.assert_close(F.text_classifier(emb), torch.stack(expected))
    with pytest.raises(ValueError, match="prompt_embeddings"):
        F.text_classifier(emb[0])


def test_cache_keys_average_raw_views_before_normalising():
    torch.manual_seed(0)
    views = torch.randn(4, 6, 8, dtype=torch.float64) * torch.rand(4, 6, 1, dtype=torch.float64)
    mean = views.sum(0) / 4
    torch.testing.assert_close(F.cache_keys(views), mean / mean.norm(dim=1, keepdim=True))
    # not the same as averaging normalised views
    assert not torch.allclose(F.cache_keys(views), _unit(_unit(views).mean(0)))


@pytest.mark.parametrize("blocked", [True, False])
def test_class_sum_equals_onehot_matmul(blocked):
    torch.manual_seed(0)
    c, per = 4, 3
    labels = torch.arange(c).repeat_interleave(per)
    if not blocked:
        labels = labels[torch.randperm(len(labels))]
    values = torch.rand(5, len(labels), dtype=torch.float64)
    onehot = torch.nn.functional.one_hot(labels, c).double()
    torch.testing.assert_close(F.class_sum(values, labels, c), values @ onehot)


def test_class_sum_uneven_classes():
    labels = torch.tensor([2, 0, 0, 1, 2, 2])
    values = torch.arange(12, dtype=torch.float64).reshape(2, 6)
    assert F.class_sum(values, labels, 4).tolist() == [[3.0, 3.0, 9.0, 0.0], [15.0, 9.0, 27.0, 0.0]]


def test_tip_logits_against_float64_formula():
    torch.manual_seed(1)
    n, k, c, d = 7, 12, 4, 16
    x = _unit(torch.randn(n, d, dtype=torch.float64))
    keys = _unit(torch.randn(k, d, dtype=torch.float64))
    labels = torch.randint(0, c, (k,))
    w = _unit(torch.randn(c, d, dtype=torch.float64))
    alpha, beta = 1.7, 5.5
    expected = torch.zeros(n, c, dtype=torch.float64)
    for i in range(n):
        for j in range(c):
            cache = sum(
                float(torch.exp(-beta * (1 - x[i] @ keys[m]))) for m in range(k) if labels[m] == j
            )
            expected[i, j] = 100.0 * float(x[i] @ w[j]) + alpha * cache
    got = F.tip_logits(x, keys, labels, w, alpha=alpha, beta=beta)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(
        F.tip_logits(x, keys, labels, w, alpha=0.0, beta=beta), 100 * x @ w.T
    )


def test_reference_grid_is_the_reference_list():
    assert F.reference_grid(7, 200) == [i * (7 - 0.1) / 200 + 0.1 for i in range(200)]
    assert F.reference_grid(3, 20)[:3] == pytest.approx([0.1, 0.245, 0.39])
    assert max(F.reference_grid(3, 20)) < 3
    with pytest.raises(ValueError, match="search_step"):
        F.reference_grid(3, 0)


def test_first_best_keeps_first_of_ties():
    scores = torch.tensor([[1, 3, 3], [3, 2, 0]])
    assert F.first_best(scores) == (0, 1)


@pytest.mark.parametrize("seed", range(5))
def test_count_correct_over_alpha_equals_brute_force(seed):
    torch.manual_seed(seed)
    n, c = 50, 6
    base = torch.randn(n, c, dtype=torch.float64) * 3
    extra = torch.rand(n, c, dtype=torch.float64) * 4
    labels = torch.randint(0, c, (n,))
    alphas = torch.linspace(0.1, 5, 40, dtype=torch.float64)
    brute = torch.stack([((base + a * extra).argmax(1) == labels).sum() for a in alphas])
    assert F.count_correct_over_alpha(base, extra, labels, alphas).tolist() == brute.tolist()
    # a batch dimension (one per β) gives the same counts row by row
    batched = F.count_correct_over_alpha(base, torch.stack([extra, 2 * extra]), labels, alphas)
    assert batched[0].tolist() == brute.tolist()


def _world(seed, n_val, c=5, shots=4, d=12, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    means = _unit(torch.randn(c, d, generator=g, dtype=dtype))
    labels = torch.arange(c).repeat_interleave(shots)
    keys = _unit(means[labels] + 0.6 * torch.randn(len(labels), d, generator=g, dtype=dtype))
    y = torch.randint(0, c, (n_val,), generator=g)
    x = _unit(means[y] + 0.6 * torch.randn(n_val, d, generator=g, dtype=dtype))
    w = _unit(means + 0.9 * torch.randn(c, d, generator=g, dtype=dtype))
    return x, y, keys, labels, w


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("n_val", [2, 3, 5, 40])
def test_search_tip_selects_the_reference_point(seed, n_val, dtype):
    x, y, keys, labels, w = _world(seed, n_val, dtype=dtype)
    scale_, step = (7.0, 3.0), (12, 6)
    ref = _reference_search(x, y, keys, labels, w, scale_, step)
    # tiny chunk budget: many outer chunks and one-row blocks
    got = F.search_tip(x, y, keys, labels, w, search_scale=scale_, search_step=step, chunk_bytes=64)
    if ref[2] == 0.0:
        # the reference never beats its initial 0 and returns (0, 0); we return the first point
        assert got == (0.1, 0.1, 0.0)
    else:
        assert got == ref
    assert F.search_tip(x, y, keys, labels, w, search_scale=scale_, search_step=step) == got


def test_search_tip_unsorted_labels_and_reference_grid():
    x, y, keys, labels, w = _world(3, 30, c=4, shots=3)
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    ref = _reference_search(x, y, keys[perm], labels[perm], w, (7, 3), (200, 20))
    assert F.search_tip(x, y, keys[perm], labels[perm], w) == ref


def _spy_dtypes(monkeypatch, name):
    """Record the dtype of the validation features that ``F.<name>`` is called with."""
    real, seen = getattr(F, name), []

    def spy(x_val, *args, **kwargs):
        seen.append(x_val.dtype)
        return real(x_val, *args, **kwargs)

    monkeypatch.setattr(F, name, spy)
    return seen


def test_search_tip_keeps_dtype_and_accepts_float32(monkeypatch):
    x, y, keys, labels, w = _world(0, 20, dtype=torch.float32)
    counted_in = _spy_dtypes(monkeypatch, "cache_grid_counts")
    got = F.search_tip(x, y, keys, labels, w, search_step=(10, 5))
    assert counted_in == [torch.float32]  # searched in float32, not upcast to float64
    ref = _reference_search(x, y, keys, labels, w, (7, 3), (10, 5))  # the float32 loop
    assert ref[2] > 0
    assert got == ref
    with pytest.raises(ValueError, match="x_val"):
        F.search_tip(x[:0], y[:0], keys, labels, w)
    with pytest.raises(ValueError, match="search_scale"):
        F.search_tip(x, y, keys, labels, w, search_scale=(7,))


def test_affinity_in_place_is_bit_identical_and_keeps_autograd():
    g = torch.Generator().manual_seed(3)
    x = torch.nn.functional.normalize(torch.randn(7, 12, generator=g), dim=1)
    keys = torch.nn.functional.normalize(torch.randn(9, 12, generator=g), dim=1)
    for dtype in (torch.float16, torch.float32, torch.float64):
        xd, kd = x.to(dtype), keys.to(dtype)
        expected = torch.exp((xd @ kd.T - 1.0) * 5.5)
        sim = xd @ kd.T
        out = F.affinity_from_similarity_(sim, 5.5)
        assert out.data_ptr() == sim.data_ptr()  # written over its input
        assert torch.equal(out, expected)
        assert torch.equal(F.tip_affinity(xd, kd, beta=5.5), expected)
    trainable = keys.clone().requires_grad_(True)
    F.tip_affinity(x, trainable, beta=2.0).sum().backward()
    manual = (2.0 * torch.exp((x @ keys.T - 1.0) * 2.0)).T @ x  # d/dk Σ exp(β(x·k − 1))
    torch.testing.assert_close(trainable.grad, manual)


def test_search_tip_half_precision_counts_in_its_own_dtype(monkeypatch):
    x, y, keys, labels, w = (t.half() if t.is_floating_point() else t for t in _world(1, 30))
    counted_in = _spy_dtypes(monkeypatch, "tip_grid_counts")
    got = F.search_tip(x, y, keys, labels, w, search_step=(12, 6))
    assert counted_in == [torch.float16]  # not cache_grid_counts, which searches in float32
    # the reference loop run on the float16 tensors computes every logit in float16
    ref = _reference_search(x, y, keys, labels, w, (7.0, 3.0), (12, 6))
    assert ref[2] > 0
    assert got == ref


def _jitter_sequence(h: torch.Tensor) -> list[float]:
    """The jitters psd_cholesky's contract promises to try, in order."""
    scale = float(h.diagonal().abs().mean()) or 1.0
    return [1e-10 * scale * 100**k for k in range(8)]


def test_psd_cholesky_of_a_definite_matrix_is_the_plain_factor():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, generator=g, dtype=torch.float64)
    h = a @ a.T + torch.eye(6, dtype=torch.float64)
    want = torch.linalg.cholesky(h)
    got = F.psd_cholesky(h.clone())
    torch.testing.assert_close(got, want, rtol=0, atol=1e-9)


def test_psd_cholesky_adds_the_smallest_jitter_of_its_sequence_that_works():
    """A singular PSD matrix: the factor is that of ``h + j·I`` for the first ``j`` of the
    sequence ``1e-10·mean|diag|·100^k`` with which a plain Cholesky succeeds (found here by a
    loop over ``torch.linalg.cholesky_ex``)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 3, generator=g, dtype=torch.float32)
    h = x @ x.T  # rank 3 of 8
    eye = torch.eye(8)
    first = next(
        j for j in _jitter_sequence(h) if int(torch.linalg.cholesky_ex(h + j * eye)[1]) == 0
    )
    assert first > _jitter_sequence(h)[0]  # the first try must fail for the test to mean much
    got = F.psd_cholesky(h.clone())
    torch.testing.assert_close(got, torch.linalg.cholesky(h + first * eye), rtol=0, atol=0)


def test_psd_cholesky_of_zeros_uses_unit_scale():
    got = F.psd_cholesky(torch.zeros(3, 3, dtype=torch.float64))
    torch.testing.assert_close(got, (1e-10) ** 0.5 * torch.eye(3, dtype=torch.float64))


def test_psd_cholesky_writes_into_out_and_uses_h_as_scratch():
    h = torch.tensor([[4.0, 2.0], [2.0, 3.0]], dtype=torch.float64)
    out = torch.empty(2, 2, dtype=torch.float64)
    got = F.psd_cholesky(h, out=out)
    assert got.data_ptr() == out.data_ptr()
    want = torch.linalg.cholesky(torch.tensor([[4.0, 2.0], [2.0, 3.0]], dtype=torch.float64))
    torch.testing.assert_close(out, want, rtol=0, atol=1e-8)
    assert float(h[0, 0]) != 4.0  # the jittered diagonal was written into h


def test_psd_cholesky_gives_up_after_eight_tries():
    """An indefinite matrix whose negative eigenvalue (-1e3) exceeds the largest jitter
    (1e-10·1e-3·100^7 = 10) cannot be factorised."""
    h = torch.tensor([[1e-3, 1e3], [1e3, 1e-3]], dtype=torch.float64)
    with pytest.raises(torch.linalg.LinAlgError, match="positive semi-definite"):
        F.psd_cholesky(h)
    # while one a little less indefinite than the largest jitter is factorised
    h = torch.tensor([[1e-3, 5.0], [5.0, 1e-3]], dtype=torch.float64)
    assert torch.isfinite(F.psd_cholesky(h)).all()


def test_l2_normalize_keeps_zero_rows_zero_and_is_clips_formula_otherwise():
    x = torch.randn(5, 7, generator=torch.Generator().manual_seed(3))
    x[2] = 0
    got = F.l2_normalize(x)
    assert torch.equal(got[2], torch.zeros(7))
    keep = [0, 1, 3, 4]
    assert torch.equal(got[keep], x[keep] / x[keep].norm(dim=-1, keepdim=True))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_pow2_rescale_rows_is_exact_and_bounds_each_row(dtype):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(6, 5, generator=g).to(dtype)
    x[1] = 0
    x[3] *= 64  # a power of two: its rescaled row equals row 3's own rescaling of x
    got = F.pow2_rescale_rows(x)
    assert torch.equal(got[1], x[1])
    amax = got.abs().amax(dim=1)
    nonzero = torch.tensor([0, 2, 3, 4, 5])
    assert bool(((amax[nonzero] >= 0.5) & (amax[nonzero] < 1)).all())
    # each row was multiplied by a power of two, exactly: the ratio is one constant 2^k
    ratio = (got[nonzero].double() / x[nonzero].double()).nan_to_num(nan=0.0)
    for row, r in zip(nonzero.tolist(), ratio, strict=True):
        k = torch.log2(r[x[row] != 0])
        assert torch.equal(k, k.round()), row
        assert bool((k == k[0]).all()), row


def test_pow2_rescale_rows_is_ldexp_on_float32_rows_of_any_magnitude():
    """The float32 fast path (a product with 2^−e) gives ldexp's numbers, rows of subnormal
    numbers (ldexp's path) and of float32's largest numbers included."""
    g = torch.Generator().manual_seed(0)
    for low in (-37.0, -44.0):
        mags = 10.0 ** torch.empty(500, 1).uniform_(low, 38.0, generator=g)
        x = (torch.randn(500, 16, generator=g) * mags).float()
        x[::7] = 0
        x[1::11, 3] = 3.4e38
        x[5::17, 2] = 1e-45
        _, exponent = torch.frexp(x.abs().amax(dim=-1, keepdim=True))
        assert torch.equal(F.pow2_rescale_rows(x), torch.ldexp(x, -exponent))


def test_pow2_rescale_rows_traced_serves_rows_of_subnormal_numbers():
    """A graph traced (as ``fewclip.export`` records it) on ordinary rows still gives ldexp's
    numbers for rows of subnormal numbers, whose factor 2^−e is beyond float32's range: the
    trace must not freeze the eager fast path's data-dependent choice."""
    with warnings.catch_warnings():  # trace's deprecation notes
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(F.pow2_rescale_rows, torch.randn(3, 4))
    x = torch.tensor([[1e-45, -3e-45, 0.0], [2.0, -0.5, 1.0], [7e-39, 1e-40, 0.0]])
    _, exponent = torch.frexp(x.abs().amax(dim=-1, keepdim=True))
    expected = torch.ldexp(x, -exponent)
    assert bool(torch.isfinite(expected).all())
    assert torch.equal(traced(x), expected)


def test_pow2_rescale_rows_rescues_extreme_float32_rows():
    x = torch.tensor([[3.0, -4.0], [0.0, 0.0]])
    for s in (1e-30, 1e30):
        got = F.l2_normalize(F.pow2_rescale_rows(x * s))
        torch.testing.assert_close(got, torch.tensor([[0.6, -0.8], [0.0, 0.0]]))
    # without the rescaling, the norm overflows: the row collapses to zeros
    assert torch.equal(F.l2_normalize(x * 1e30)[0], torch.zeros(2))
    assert F.pow2_rescale_rows(torch.empty(0, 3)).shape == (0, 3)
