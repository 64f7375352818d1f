"""ProKeR's fit: the memory budget (rows, solver, the BudgetError message), the slow-CPU
warning, the λ/β search through each solver path against a reference loop written here, fixed
hyper-parameters, the fitted attributes, and the agreement of a CG fit with ``proker_cg``."""

import inspect
import re
import warnings

import numpy as np
import pytest
import torch
from tests.methods._helpers import make_clustered_task

from fewclip import methods
from fewclip.errors import BudgetError
from fewclip.methods.proker import proker_cg
from fewclip.task import FeatureSet, Task
from fewclip.testing.conformance import check_selection


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _task64(seed=2):
    """4 classes × 5 shots, 3 views, 8 dims, float64 (60 view rows, 20 feature rows)."""
    return make_clustered_task(c=4, shots=5, d=8, views=3, seed=seed, dtype=torch.float64)


def _wide_val_task(seed, n_val=25):
    """4 classes × 5 shots in 8 dims (float64) and ``n_val`` validation images a class, so that
    validation accuracies are fine-grained enough to tell grid points apart."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(4, 8, generator=g, dtype=torch.float64)
    labels = torch.arange(4).repeat_interleave(5)
    feats = 3 * (means[labels] + 0.7 * torch.randn(20, 8, generator=g, dtype=torch.float64))
    vy = torch.arange(4).repeat_interleave(n_val)
    vx = 3 * (means[vy] + 0.7 * torch.randn(len(vy), 8, generator=g, dtype=torch.float64))
    text = means + torch.randn(4, 8, generator=g, dtype=torch.float64)
    return Task([f"c{i}" for i in range(4)], text, FeatureSet(feats, labels), FeatureSet(vx, vy))


def _residual_np(task, keys):
    text = _unit(task.text_weights.numpy())
    return np.eye(task.n_classes)[task.support.labels.numpy()] - keys @ text.T, text


def _dense_val_counts(task, betas, lams):
    """Validation images right at every (β, λ), by ProKeR's closed form in numpy."""
    keys = _unit(task.support.features.numpy())
    res, text = _residual_np(task, keys)
    xv, yv = _unit(task.val.features.numpy()), task.val.labels.numpy()
    counts = np.zeros((len(betas), len(lams)), dtype=int)
    for i, beta in enumerate(betas):
        k = np.exp(beta * (keys @ keys.T - 1.0))
        kv = np.exp(beta * (xv @ keys.T - 1.0))
        for j, lam in enumerate(lams):
            alpha = np.linalg.solve(k / lam + np.eye(len(keys)), res)
            counts[i, j] = int(((xv @ text.T + kv @ alpha).argmax(1) == yv).sum())
    return counts


def _first_best(counts, betas, lams, n_val):
    i, j = np.unravel_index(int(np.argmax(counts)), counts.shape)
    return betas[i], lams[j], 100.0 * counts[i, j] / n_val


# -- the memory budget --------------------------------------------------------------------


@pytest.mark.parametrize(("dtype", "itemsize"), [("float32", 4), ("float64", 8)])
def test_auto_rows_are_views_exactly_when_their_kernel_fits(dtype, itemsize):
    """60 view rows need 2·60²·itemsize bytes: views at that budget, plain features one byte
    below (the budget counts the compute dtype's items)."""
    task = _task64()
    need = 2 * 60 * 60 * itemsize
    kw = {"beta": 2.0, "lam": 0.1, "dtype": dtype}
    at = methods.create("proker", max_kernel_bytes=need, **kw).fit(task)
    assert (at.rows_, at.solver_) == ("views", "cholesky")
    assert at.centers_.shape == (60, 8)
    below = methods.create("proker", max_kernel_bytes=need - 1, **kw).fit(task)
    assert (below.rows_, below.solver_) == ("features", "cholesky")
    assert below.centers_.shape == (20, 8)


@pytest.mark.parametrize(("dtype", "itemsize"), [("float32", 4), ("float64", 8)])
def test_auto_solver_is_cholesky_exactly_when_the_kernel_fits(dtype, itemsize):
    task = _task64()
    need = 2 * 20 * 20 * itemsize
    kw = {"beta": 2.0, "lam": 0.1, "rows": "features", "dtype": dtype}
    assert methods.create("proker", max_kernel_bytes=need, **kw).fit(task).solver_ == "cholesky"
    assert methods.create("proker", max_kernel_bytes=need - 1, **kw).fit(task).solver_ == "cg"


def test_cholesky_over_budget_message_word_for_word():
    """16,384 float32 rows need 2·16384²·4 bytes = 2.0 GiB."""
    n = 16384
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 2
    task = Task(["a", "b"], torch.eye(2, 4), FeatureSet(torch.randn(n, 4, generator=g), labels))
    message = (
        "solver='cholesky': 16384 support rows need 2.0 GiB for the dense kernel, over "
        "max_kernel_bytes=1.0 GiB; use solver='cg' (exact, chunked) or solver='nystrom' "
        "(approximate)"
    )
    pk = methods.create("proker", beta=1.0, lam=0.1, solver="cholesky", max_kernel_bytes=2**30)
    with pytest.raises(BudgetError, match=f"^{re.escape(message)}$"):
        pk.fit(task)


def test_nystrom_with_as_many_landmarks_as_rows_is_the_dense_solve():
    task = _task64()
    kw = {"beta": 2.0, "lam": 0.1, "rows": "features", "dtype": "float64"}
    exact = methods.create("proker", n_landmarks=20, solver="nystrom", **kw).fit(task)
    assert exact.solver_ == "cholesky"
    dense = methods.create("proker", solver="cholesky", **kw).fit(task)
    assert torch.equal(exact.dual_coef_, dense.dual_coef_)
    assert methods.create("proker", n_landmarks=19, solver="nystrom", **kw).fit(task).solver_ == (
        "nystrom"
    )


# -- the slow-CPU warning -----------------------------------------------------------------


def _many_rows_task(n):
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(n) % 3
    feats = torch.randn(n, 4, generator=g)
    return Task(["a", "b", "c"], torch.randn(3, 4, generator=g), FeatureSet(feats, labels))


# one landmark and no CG iteration (coefficients zero): the fit stays cheap over 8,193 rows
_CHEAP_CG = {"beta": 2.0, "lam": 0.1, "rows": "features", "n_landmarks": 1, "max_iter": 0}


def test_exact_solve_over_more_than_8192_rows_on_cpu_warns():
    pk = methods.create("proker", solver="cg", **_CHEAP_CG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pk.fit(_many_rows_task(8193))
    assert [str(w.message) for w in caught] == [
        "ProKeR: exact solve over 8193 support rows on CPU is slow; solver='nystrom' "
        "approximates it in seconds"
    ]
    assert caught[0].category is UserWarning


def test_the_slow_cpu_warning_points_at_the_line_calling_fit():
    """The warning names the user's line that called fit. mutmut's trampolines add frames
    between fit and _fit, so this test is deselected under mutmut ([tool.mutmut]
    pytest_add_cli_args in pyproject.toml)."""
    pk = methods.create("proker", solver="cg", **_CHEAP_CG)
    task = _many_rows_task(8193)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit_line = inspect.currentframe().f_lineno + 1
        pk.fit(task)
    assert [(w.filename, w.lineno) for w in caught] == [(__file__, fit_line)]


@pytest.mark.parametrize(("solver", "rows"), [("cg", 8192), ("nystrom", 8193)])
def test_no_slow_cpu_warning_at_8192_rows_or_with_nystrom(solver, rows):
    pk = methods.create("proker", solver=solver, **_CHEAP_CG)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pk.fit(_many_rows_task(rows))
    assert pk.solver_ == solver


@pytest.mark.parametrize("solver", ["cholesky", "eigh", "cg", "nystrom"])
def test_a_small_fit_and_search_warn_nothing(solver):
    """No warning of any kind on a small task, through each solver's search path (the search
    reuses preallocated buffers; a wrongly shaped one would make torch warn on resizing)."""
    task = _task64()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pk = methods.create(
            "proker", betas=(1.0, 4.0), lams=(0.1, 1.0), solver=solver, n_landmarks=6
        ).fit(task)
    assert pk.solver_ == solver


# -- fitted attributes --------------------------------------------------------------------


@pytest.mark.parametrize("solver", ["cholesky", "eigh", "nystrom", "cg"])
def test_cg_iterations_only_for_the_cg_solver(solver):
    pk = methods.create(
        "proker", beta=2.0, lam=0.1, solver=solver, n_landmarks=6, rows="features"
    ).fit(_task64())
    if solver == "cg":
        assert isinstance(pk.cg_iterations_, int)
        assert pk.cg_iterations_ > 0
    else:
        assert pk.cg_iterations_ is None


def test_mean_rows_of_a_float64_task_computed_in_float32():
    """rows='mean' casts the view bank to the compute dtype like the other row kinds."""
    task = _task64()
    pk = methods.create("proker", beta=2.0, lam=0.1, rows="mean").fit(task)
    assert pk.centers_.dtype == torch.float32
    expected = _unit(task.support.views.numpy().mean(axis=0))  # raw views averaged
    np.testing.assert_allclose(pk.centers_.numpy(), expected, atol=1e-6)
    assert pk.logits(task.val.features).dtype == torch.float32


def test_a_cg_fit_is_proker_cg_with_the_methods_settings():
    """The fitted coefficients and iteration count are those of ``proker_cg`` called with the
    method's tol, max_iter, n_landmarks (here 12: fewer than the 20 rows, more than the 8
    dimensions) and seed; and the function's default seed is the method's."""
    task = _task64()
    keys = _unit(task.support.features.numpy())
    res, _ = _residual_np(task, keys)
    keys_t, res_t = torch.from_numpy(keys), torch.from_numpy(res)
    kw = {"beta": 2.0, "lam": 0.01, "tol": 1e-4, "max_iter": 50}
    for seed in (7, None):
        extra = {} if seed is None else {"seed": seed}
        pk = methods.create(
            "proker", solver="cg", rows="features", n_landmarks=12, dtype="float64", **kw, **extra
        ).fit(task)
        coef, iters = proker_cg(keys_t, res_t, n_landmarks=12, **kw, **extra)
        assert pk.cg_iterations_ == iters
        np.testing.assert_allclose(pk.dual_coef_.numpy(), coef.numpy(), rtol=0, atol=1e-12)
    other, _ = proker_cg(keys_t, res_t, n_landmarks=12, seed=8, **kw)
    assert not torch.allclose(other, coef, rtol=0, atol=1e-12)  # the seed matters here


# -- the search ---------------------------------------------------------------------------


def test_a_fixed_lam_searches_beta_alone():
    task = _wide_val_task(seed=3)
    betas = (1.0, 2.0, 4.0, 8.0)
    pk = methods.create("proker", lam=0.7, betas=betas, dtype="float64").fit(task)
    counts = _dense_val_counts(task, betas, (0.7,))
    assert len(set(counts[:, 0])) > 1  # β matters on this task
    assert (pk.beta_, pk.lam_, pk.val_accuracy_) == pytest.approx(
        _first_best(counts, betas, (0.7,), task.val.n)
    )


@pytest.mark.parametrize("fixed", [{"beta": 2.5}, {"lam": 0.07}])
def test_the_reported_search_grid_with_one_hyper_parameter_fixed(fixed):
    """The conformance check of the search holds when β or λ is fixed (off the default
    grids): the reported candidates are exactly the searched ones."""
    cls = methods.get("proker")
    check_selection(cls, {**cls.quick_params, **fixed})


def test_the_nystrom_search_follows_the_reference_loop():
    """Every (β, λ) of the Nyström search scored by the Nyström closed form written here, on
    the landmarks the method reports; the first best is kept."""
    task = _wide_val_task(seed=0)
    betas, lams = (1.0, 4.0, 9.0), (0.01, 0.3, 3.0)
    kw = {"solver": "nystrom", "n_landmarks": 7, "rows": "features", "dtype": "float64"}
    pk = methods.create("proker", betas=betas, lams=lams, **kw).fit(task)
    land = methods.create("proker", beta=1.0, lam=1.0, **kw).fit(task).centers_.numpy()
    keys = _unit(task.support.features.numpy())
    res, text = _residual_np(task, keys)
    xv, yv = _unit(task.val.features.numpy()), task.val.labels.numpy()
    counts = np.zeros((3, 3), dtype=int)
    for i, beta in enumerate(betas):
        k_sm = np.exp(beta * (keys @ land.T - 1.0))
        k_mm = np.exp(beta * (land @ land.T - 1.0))
        k_vm = np.exp(beta * (xv @ land.T - 1.0))
        for j, lam in enumerate(lams):
            c = lam * np.linalg.solve(k_sm.T @ k_sm + lam * k_mm, k_sm.T @ res)
            counts[i, j] = int(((xv @ text.T + k_vm @ c).argmax(1) == yv).sum())
    assert len(set(counts.ravel())) > 3
    assert (pk.beta_, pk.lam_, pk.val_accuracy_) == pytest.approx(
        _first_best(counts, betas, lams, task.val.n)
    )


def test_the_cg_search_warm_starts_each_lam_from_the_previous_one():
    """With CG capped at two iterations the search's solutions are inexact, and it scores
    the chain that starts each λ (in grid order, afresh for each β) from the previous λ's
    solution; this chain picks another point than exact solves or cold starts would."""
    task = _wide_val_task(seed=2)
    betas, lams = (1.0, 4.0), (0.01, 0.1, 1.0, 10.0)
    cg = {"tol": 1e-12, "max_iter": 2, "n_landmarks": 1}
    pk = methods.create(
        "proker", betas=betas, lams=lams, solver="cg", rows="features", dtype="float64", **cg
    ).fit(task)
    keys = _unit(task.support.features.numpy())
    res, text = _residual_np(task, keys)
    xv, yv = _unit(task.val.features.numpy()), task.val.labels.numpy()
    keys_t, res_t = torch.from_numpy(keys), torch.from_numpy(res)
    warm, cold = np.zeros((2, 4), dtype=int), np.zeros((2, 4), dtype=int)
    for i, beta in enumerate(betas):
        kv = np.exp(beta * (xv @ keys.T - 1.0))
        prev = None
        for j, lam in enumerate(lams):
            coef, _ = proker_cg(keys_t, res_t, beta=beta, lam=lam, x0=prev, **cg)
            prev = coef
            warm[i, j] = int(((xv @ text.T + kv @ coef.numpy()).argmax(1) == yv).sum())
            fresh, _ = proker_cg(keys_t, res_t, beta=beta, lam=lam, **cg)
            cold[i, j] = int(((xv @ text.T + kv @ fresh.numpy()).argmax(1) == yv).sum())
    chosen = _first_best(warm, betas, lams, task.val.n)
    assert (pk.beta_, pk.lam_, pk.val_accuracy_) == pytest.approx(chosen)
    assert _first_best(cold, betas, lams, task.val.n)[:2] != chosen[:2]
    exact = _first_best(_dense_val_counts(task, betas, lams), betas, lams, task.val.n)
    assert exact[:2] != chosen[:2]


def test_a_single_validation_image_scores_0_or_100_percent():
    task = _task64()
    s = task.support
    one = Task(
        task.classnames, task.text_weights, s, FeatureSet(s.features[:1], s.labels[:1])
    )  # a support image itself: some grid point classifies it right
    pk = methods.create("proker", betas=(1.0, 4.0), lams=(0.1, 1.0)).fit(one)
    assert pk.val_accuracy_ == 100.0


def test_a_one_image_validation_set_is_searched_like_any_other():
    """The eigh search with one validation image: its accuracy is 0 or 100 %, and the chosen
    point's coefficients are that point's solve (also when one correct image is the best
    count there is)."""
    task = _task64()
    x, y = task.val.features[:1], task.val.labels[:1]
    one = Task(task.classnames, task.text_weights, task.support, FeatureSet(x, y))
    m = methods.create("proker", solver="eigh", dtype="float64").fit(one)
    assert m.val_accuracy_ in (0.0, 100.0)
    fixed = methods.create("proker", solver="eigh", beta=m.beta_, lam=m.lam_, dtype="float64")
    fixed.fit(one)
    torch.testing.assert_close(m.dual_coef_, fixed.dual_coef_)
    if m.val_accuracy_ == 100.0:
        assert bool(m.predict(x) == y)
