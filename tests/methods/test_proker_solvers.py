"""ProKeR's public solvers against direct float64 solves: ``proker_cholesky`` (float64 retry,
not-positive-definite error, output dtype, the ``work`` buffer), ``nystrom_coef`` (precomputed
``gram``/``rhs``, output dtype) and ``proker_cg`` (the effect of its defaults, the landmark
preconditioner, warm starts and the per-column stopping rule)."""

import re
import warnings

import numpy as np
import pytest
import torch

from fewclip.errors import InvalidValueError
from fewclip.methods.proker import nystrom_coef, proker_cg, proker_cholesky


def _unit_rows(n, d, seed, dtype=torch.float64, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) + shift
    return (x / x.norm(dim=1, keepdim=True)).to(dtype)


def _rhs(n, c, seed, dtype=torch.float64):
    return torch.randn(n, c, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _dense(keys, rhs, beta, lam):
    """``(K/λ + I)⁻¹ R`` by numpy in float64, with ``K = exp(β(S·Sᵀ − 1))``."""
    s = keys.double().numpy()
    k = np.exp(beta * (s @ s.T - 1.0))
    return np.linalg.solve(k / lam + np.eye(len(s)), rhs.double().numpy())


# -- proker_cholesky ------------------------------------------------------------------------


def test_cholesky_retries_a_float32_system_in_float64():
    """40 nearly collinear rows and λ = 1e-7: float32 Cholesky breaks down, the float64 retry
    of the same float32 matrix succeeds, and the answer (float32) is the float64 solve's."""
    keys = _unit_rows(40, 4, seed=1, shift=3.0)
    gram = (keys @ keys.T - 1.0).float()
    lam = 1e-7
    h = gram.exp()  # K + λI as a float32 matrix (β = 1)
    h.diagonal().add_(lam)
    assert int(torch.linalg.cholesky_ex(h).info) != 0  # float32 really fails
    res = torch.randn(40, 2, generator=torch.Generator().manual_seed(1))
    out = proker_cholesky(gram, res, beta=1.0, lam=lam)
    assert out.dtype == torch.float32
    expected = lam * np.linalg.solve(h.double().numpy(), res.double().numpy())
    np.testing.assert_allclose(out.double().numpy(), expected, atol=1e-4 * np.abs(expected).max())


def test_cholesky_of_an_indefinite_float64_system_says_so():
    """A float64 system that is not positive definite is not retried: ProKeR's own message,
    with the failing leading minor."""
    gram_minus_one = torch.tensor([[0.0, 5.0], [5.0, 0.0]], dtype=torch.float64)
    message = "ProKeR: the kernel system is not positive definite (leading minor 2)"
    with pytest.raises(torch.linalg.LinAlgError, match=f"^{re.escape(message)}$"):
        proker_cholesky(gram_minus_one, torch.ones(2, 1, dtype=torch.float64), beta=1.0, lam=0.1)


@pytest.mark.parametrize(
    ("gram_dtype", "res_dtype"),
    [(torch.float64, torch.float32), (torch.float32, torch.float64), (torch.float32,) * 2],
)
def test_cholesky_answers_in_the_residuals_dtype(gram_dtype, res_dtype):
    keys = _unit_rows(12, 6, seed=3)
    res = _rhs(12, 3, seed=4)
    out = proker_cholesky(
        (keys @ keys.T - 1.0).to(gram_dtype), res.to(res_dtype), beta=2.0, lam=0.1
    )
    assert out.dtype == res_dtype
    np.testing.assert_allclose(out.double().numpy(), _dense(keys, res, 2.0, 0.1), atol=1e-5)


def test_cholesky_uses_the_given_work_matrix_and_warns_nothing():
    """``work`` is the one scratch matrix: afterwards its lower triangle is the Cholesky factor
    of ``K + λI``; the input Gram matrix is left as it was, and the answer is the same."""
    keys = _unit_rows(10, 5, seed=5)
    res = _rhs(10, 2, seed=6)
    gram = keys @ keys.T - 1.0
    before = gram.clone()
    work = torch.empty_like(gram)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = proker_cholesky(gram, res, beta=3.0, lam=0.2, work=work)
        plain = proker_cholesky(gram, res, beta=3.0, lam=0.2)
    assert torch.equal(gram, before)
    k = np.exp(3.0 * (keys.numpy() @ keys.numpy().T - 1.0)) + 0.2 * np.eye(10)
    np.testing.assert_allclose(torch.tril(work).numpy(), np.linalg.cholesky(k), atol=1e-12)
    assert torch.equal(out, plain)
    np.testing.assert_allclose(out.numpy(), _dense(keys, res, 3.0, 0.2), rtol=1e-10, atol=1e-12)


# -- nystrom_coef -------------------------------------------------------------------------


def _nystrom_inputs(dtype):
    keys = _unit_rows(30, 6, seed=7)
    land = keys[::3]
    k_sm = torch.exp(2.0 * (keys @ land.T - 1.0))
    k_mm = torch.exp(2.0 * (land @ land.T - 1.0))
    return k_sm.to(dtype), k_mm.to(dtype), _rhs(30, 3, seed=8, dtype=dtype)


def _nystrom_reference(k_sm, k_mm, res, lam):
    """``λ·(K_mS K_Sm + λ·K_mm)⁻¹ K_mS R`` in float64 numpy."""
    a, b, r = (t.double().numpy() for t in (k_sm, k_mm, res))
    return lam * np.linalg.solve(a.T @ a + lam * b, a.T @ r)


def test_nystrom_answers_in_the_residuals_dtype():
    k_sm, k_mm, res = _nystrom_inputs(torch.float32)
    out = nystrom_coef(k_sm, k_mm, res, lam=0.1)
    assert out.dtype == torch.float32
    expected = _nystrom_reference(k_sm, k_mm, res, 0.1)
    np.testing.assert_allclose(out.double().numpy(), expected, atol=1e-3 * np.abs(expected).max())


def test_nystrom_uses_a_precomputed_float64_gram_and_rhs_as_given():
    """``gram`` and ``rhs`` may come in another dtype than ``k_sm`` ("any dtype"): precomputed
    in float64 from float32 kernels, they give the float64 answer, which recomputing them in
    float32 would not (λ = 1e-6 makes the system ill-conditioned)."""
    k_sm, k_mm, _ = _nystrom_inputs(torch.float32)
    res = _rhs(30, 3, seed=8)  # float64
    gram = k_sm.double().T @ k_sm.double()
    rhs = k_sm.double().T @ res
    lam = 1e-6
    out = nystrom_coef(k_sm, k_mm, res, lam=lam, gram=gram, rhs=rhs)
    expected = _nystrom_reference(k_sm, k_mm, res, lam)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-7, atol=1e-9 * np.abs(expected).max())


def test_a_zero_regularisation_is_refused_word_for_word():
    keys = _unit_rows(4, 3, seed=9)
    res = _rhs(4, 2, seed=9)
    message = f"^{re.escape('lam: expected a positive regularisation, found 0.0')}$"
    with pytest.raises(InvalidValueError, match=message):
        nystrom_coef(keys @ keys.T, keys @ keys.T, res, lam=0.0)
    with pytest.raises(InvalidValueError, match=message):
        proker_cg(keys, res, beta=1.0, lam=0.0)


# -- proker_cg: defaults ------------------------------------------------------------------


def test_cg_default_tolerance_reaches_the_dense_solution():
    keys = _unit_rows(40, 8, seed=10)
    res = _rhs(40, 3, seed=11)
    x, iters = proker_cg(keys, res, beta=2.0, lam=0.05, n_landmarks=4)
    direct = _dense(keys, res, 2.0, 0.05)
    assert iters > 1
    np.testing.assert_allclose(x.numpy(), direct, atol=1e-5 * np.abs(direct).max())


def test_cg_default_iteration_cap_is_a_thousand():
    """An unreachable tolerance (0) runs until the default cap."""
    keys = _unit_rows(10, 8, seed=0)
    _, iters = proker_cg(keys, _rhs(10, 2, seed=1), beta=2.0, lam=0.1, tol=0.0)
    assert iters == 1000


def test_cg_default_preconditioner_has_rank_512():
    """On 513 well-separated rows, 512 landmarks leave one direction to CG (two iterations),
    while all 513 make the preconditioner exact (one)."""
    keys = _unit_rows(513, 32, seed=12)
    res = _rhs(513, 2, seed=13)
    x, iters = proker_cg(keys, res, beta=1.0, lam=0.1)
    _, full = proker_cg(keys, res, beta=1.0, lam=0.1, n_landmarks=513)
    assert (iters, full) == (2, 1)
    direct = _dense(keys, res, 1.0, 0.1)
    np.testing.assert_allclose(x.numpy(), direct, atol=1e-5 * np.abs(direct).max())


# -- proker_cg: the preconditioner's landmarks --------------------------------------------


def test_cg_with_more_dimensions_than_rows():
    keys = _unit_rows(6, 16, seed=14)
    res = _rhs(6, 2, seed=15)
    x, _ = proker_cg(keys, res, beta=2.0, lam=0.1, tol=1e-12, n_landmarks=3)
    np.testing.assert_allclose(x.numpy(), _dense(keys, res, 2.0, 0.1), rtol=1e-9, atol=1e-10)


def test_cg_one_landmark_is_an_exact_preconditioner_for_a_rank_one_kernel():
    """Three identical rows: K = 11ᵀ has rank one, so a single landmark makes the Nyström
    preconditioner exact (one iteration); plain CG needs two (two distinct eigenvalues)."""
    keys = _unit_rows(1, 4, seed=16).repeat(3, 1)
    res = torch.tensor([[1.0], [0.0], [0.0]], dtype=torch.float64)
    x1, one = proker_cg(keys, res, beta=1.0, lam=0.5, n_landmarks=1)
    x0, plain = proker_cg(keys, res, beta=1.0, lam=0.5, n_landmarks=0)
    assert (one, plain) == (1, 2)
    expected = np.linalg.solve(np.ones((3, 3)) / 0.5 + np.eye(3), res.numpy())
    np.testing.assert_allclose(x1.numpy(), expected, atol=1e-8)
    np.testing.assert_allclose(x0.numpy(), expected, atol=1e-12)


def test_cg_landmarks_come_from_its_seed_not_the_global_generator():
    """The landmark draw uses its own generator: the global RNG is not consumed, and the same
    seed gives the same answer whatever the global state."""
    keys = _unit_rows(30, 8, seed=17)
    res = _rhs(30, 2, seed=18)
    kw = {"beta": 2.0, "lam": 0.01, "tol": 1e-3, "n_landmarks": 3, "seed": 5}
    with torch.random.fork_rng():  # the global state is restored afterwards
        torch.manual_seed(0)
        state = torch.get_rng_state()
        first = proker_cg(keys, res, **kw)
        assert torch.equal(torch.get_rng_state(), state)
        torch.manual_seed(123)
        second = proker_cg(keys, res, **kw)
    assert torch.equal(first[0], second[0])
    assert first[1] == second[1]


# -- proker_cg: warm start and stopping rule ----------------------------------------------


def test_cg_warm_start_at_the_solution_needs_no_iteration():
    keys = _unit_rows(20, 8, seed=19)
    res = _rhs(20, 2, seed=20)
    direct = torch.from_numpy(_dense(keys, res, 2.0, 0.1))
    x0 = direct.clone()
    x, iters = proker_cg(keys, res, beta=2.0, lam=0.1, n_landmarks=2, x0=x0)
    assert iters == 0
    assert torch.equal(x, direct)
    assert torch.equal(x0, direct)  # not written over
    assert x is not x0


def test_cg_warm_start_elsewhere_converges_to_the_solution():
    """x0 is any starting point: from a wrong one, CG still ends at (K/λ + I)⁻¹R."""
    keys = _unit_rows(20, 8, seed=21)
    res = _rhs(20, 2, seed=22)
    direct = _dense(keys, res, 2.0, 0.1)
    x0 = torch.from_numpy(direct) + _rhs(20, 2, seed=23)
    x, iters = proker_cg(keys, res, beta=2.0, lam=0.1, tol=1e-12, n_landmarks=2, x0=x0)
    assert iters > 0
    np.testing.assert_allclose(x.numpy(), direct, rtol=1e-9, atol=1e-10)


def test_cg_zero_right_hand_side_is_solved_without_iterating():
    keys = _unit_rows(8, 4, seed=24)
    zero = torch.zeros(8, 2, dtype=torch.float64)
    for tol in (0.0, 1e-6):
        x, iters = proker_cg(keys, zero, beta=2.0, lam=0.1, tol=tol)
        assert iters == 0
        assert torch.equal(x, zero)


def _relative_residuals(keys, res, x, beta, lam):
    s = keys.numpy()
    a = np.exp(beta * (s @ s.T - 1.0)) / lam + np.eye(len(s))
    return np.linalg.norm(res.numpy() - a @ x.numpy(), axis=0) / np.linalg.norm(res.numpy(), axis=0)


def test_cg_stops_when_every_column_is_within_tol_of_its_own_norm():
    """The tolerance is relative and per column: with right-hand-side columns of norms 1e-2,
    1 and 1e4, every column ends within tol of its own norm, and one iteration fewer leaves a
    column short of it (CG stops at the first iteration where all are within)."""
    keys = _unit_rows(60, 8, seed=25)
    res = _rhs(60, 3, seed=26) * torch.tensor([1e-2, 1.0, 1e4], dtype=torch.float64)
    beta, lam, tol = 2.0, 0.01, 1e-6
    x, iters = proker_cg(keys, res, beta=beta, lam=lam, tol=tol, n_landmarks=0)
    assert iters > 2
    assert (_relative_residuals(keys, res, x, beta, lam) <= tol).all()
    early, _ = proker_cg(keys, res, beta=beta, lam=lam, tol=tol, n_landmarks=0, max_iter=iters - 1)
    assert (_relative_residuals(keys, res, early, beta, lam) > tol).any()
    # R scaled by a power of two: the same iterations, the solution scaled exactly alike
    scaled, same = proker_cg(keys, res * 1024.0, beta=beta, lam=lam, tol=tol, n_landmarks=0)
    assert same == iters
    assert torch.equal(scaled, 1024.0 * x)
