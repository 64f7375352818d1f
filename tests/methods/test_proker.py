"""ProKeR against a direct float64 solve: solvers, search, limits, rows and memory budget."""

import numpy as np
import pytest
import torch
from tests.methods._helpers import make_clustered_task as make_task
from tests.methods._helpers import np_unit as _np_normalise

from fewclip import functional as F
from fewclip import methods
from fewclip.functional import kernel_matmul
from fewclip.methods.proker import (
    IMAGENET_HPARAMS,
    nystrom_coef,
    proker_cg,
    proker_cholesky,
)
from fewclip.task import FeatureSet, Task
from fewclip.testing.conformance import check_selection


@pytest.fixture
def task64():
    return make_task(c=4, shots=5, d=8, views=3, seed=2, dtype=torch.float64)


def _proker_reference(task, beta, lam, queries, rows="features"):
    """ProKeR's closed form by a direct float64 solve (numpy)."""
    s = task.support
    if rows == "features":
        keys = _np_normalise(s.features.numpy())
        labels = s.labels.numpy()
    else:
        views = _np_normalise(s.views.numpy())
        keys = views.reshape(-1, views.shape[-1])
        labels = np.tile(s.labels.numpy(), views.shape[0])
    text = _np_normalise(task.text_weights.numpy())
    y = np.eye(task.n_classes)[labels]
    kss = np.exp(-beta * (1 - keys @ keys.T))
    alpha = np.linalg.solve(kss / lam + np.eye(len(keys)), y - keys @ text.T)
    x = _np_normalise(queries.numpy())
    return x @ text.T + np.exp(-beta * (1 - x @ keys.T)) @ alpha


@pytest.mark.parametrize("rows", ["features", "views"])
@pytest.mark.parametrize("solver", ["cholesky", "eigh", "cg"])
def test_proker_matches_direct_solve(task64, queries64, rows, solver):
    pk = methods.create(
        "proker", beta=2.5, lam=0.07, rows=rows, solver=solver, tol=1e-12, dtype="float64"
    ).fit(task64)
    assert pk.solver_ == solver
    expected = _proker_reference(task64, 2.5, 0.07, queries64, rows)
    np.testing.assert_allclose(pk.logits(queries64).numpy(), expected, rtol=1e-9, atol=1e-9)


def test_proker_solvers_agree_on_a_larger_system():
    g = torch.Generator().manual_seed(0)
    keys = F.l2_normalize(torch.randn(150, 24, generator=g, dtype=torch.float64) + 1.5)
    res = torch.randn(150, 6, generator=g, dtype=torch.float64)
    beta, lam = 3.0, 0.01
    k = np.exp(-beta * (1 - keys.numpy() @ keys.numpy().T))
    direct = np.linalg.solve(k / lam + np.eye(150), res.numpy())
    chol = proker_cholesky(keys @ keys.T - 1, res, beta=beta, lam=lam)
    np.testing.assert_allclose(chol.numpy(), direct, rtol=1e-9, atol=1e-9 * np.abs(direct).max())
    # Nyström-preconditioned CG over kernel chunks of 16 rows
    cg, iters = proker_cg(
        keys, res, beta=beta, lam=lam, tol=1e-12, n_landmarks=30, chunk_bytes=16 * 150 * 8
    )
    np.testing.assert_allclose(cg.numpy(), direct, atol=1e-8 * np.abs(direct).max())
    assert 0 < iters < 150
    _, plain = proker_cg(keys, res, beta=beta, lam=lam, tol=1e-8, n_landmarks=0)
    _, pre = proker_cg(keys, res, beta=beta, lam=lam, tol=1e-8, n_landmarks=60)
    assert pre < plain  # the preconditioner pays for itself
    x = F.l2_normalize(torch.randn(50, 24, generator=g, dtype=torch.float64))
    np.testing.assert_allclose(
        kernel_matmul(x, keys, res, beta=beta, chunk_bytes=1000).numpy(),
        np.exp(-beta * (1 - x.numpy() @ keys.numpy().T)) @ res.numpy(),
        rtol=1e-12,
    )


def test_proker_nystrom(task64, queries64):
    # every row a landmark: the Nyström formula is the exact solution
    keys = F.l2_normalize(task64.support.features)
    text = F.l2_normalize(task64.text_weights)
    res = torch.eye(task64.n_classes, dtype=torch.float64)[task64.support.labels] - keys @ text.T
    k = torch.exp(2.0 * (keys @ keys.T - 1))
    exact = proker_cholesky(keys @ keys.T - 1, res, beta=2.0, lam=0.1)
    torch.testing.assert_close(nystrom_coef(k, k, res, lam=0.1), exact, rtol=1e-6, atol=1e-7)
    # n_landmarks ≥ rows falls back to the exact dense solver
    full = methods.create(
        "proker", beta=2.0, lam=0.1, solver="nystrom", rows="features", dtype="float64"
    )
    assert full.fit(task64).solver_ == "cholesky"
    # fewer landmarks: an approximation through m centres, close to exact on this easy task
    approx = methods.create(
        "proker", beta=2.0, lam=0.1, solver="nystrom", n_landmarks=12, rows="features",
        dtype="float64",
    ).fit(task64)  # fmt: skip
    assert approx.solver_ == "nystrom"
    assert approx.centers_.shape == (12, 8)
    err = (approx.logits(queries64) - full.logits(queries64)).abs().max()
    assert err < 0.5 * (full.logits(queries64) - _zero_shot(task64, queries64, 1.0)).abs().max()


def _zero_shot(task, queries, scale):
    return scale * F.l2_normalize(queries) @ F.l2_normalize(task.text_weights).T


def test_proker_search_follows_the_reference_loop():
    # on this draw the best point is not the grid's first, and it ties with later points
    task64 = make_task(c=4, shots=5, d=8, views=3, seed=4, dtype=torch.float64)
    betas, lams = (1.0, 3.0, 8.0), (0.01, 0.1, 1.0)
    pk = methods.create("proker", betas=betas, lams=lams, dtype="float64").fit(task64)
    best_acc, best = 0.0, None
    yv = task64.val.labels.numpy()
    for beta in betas:
        for lam in lams:
            logits = _proker_reference(task64, beta, lam, task64.val.features)
            acc = 100.0 * float((logits.argmax(1) == yv).mean())
            if acc > best_acc:
                best_acc, best = acc, (beta, lam)
    assert best == (1.0, 0.1)
    assert (pk.beta_, pk.lam_) == best
    assert pk.val_accuracy_ == pytest.approx(best_acc)
    for solver in ("eigh", "nystrom", "cg"):  # the same selection through the other solvers' paths
        other = methods.create(
            "proker", betas=betas, lams=lams, solver=solver, tol=1e-12, dtype="float64"
        ).fit(task64)
        assert (other.beta_, other.lam_) == best
    # a fixed β searches λ alone: the reference loop over λ at β = 3
    only_lam = methods.create("proker", beta=3.0, lams=lams, dtype="float64").fit(task64)
    xv = task64.val.features
    accs = [
        100.0 * float((_proker_reference(task64, 3.0, lam, xv).argmax(1) == yv).mean())
        for lam in lams
    ]
    assert accs[1] == accs[2]  # the first best is the middle λ
    assert accs[0] < accs[1]
    assert only_lam.beta_ == 3.0
    assert only_lam.lam_ == lams[accs.index(max(accs))]
    assert only_lam.val_accuracy_ == pytest.approx(max(accs))
    one = methods.create("proker", betas=(8.0,), lams=(0.01,), dtype="float64").fit(task64)
    assert (one.beta_, one.lam_) == (8.0, 0.01)
    assert one.val_accuracy_ is not None


def test_proker_val_free_transfers_imagenet_hyper_parameters(task64):
    pk = methods.create("proker").fit(task64.without_val())  # 5 shots → nearest is 4
    assert (pk.beta_, pk.lam_) == IMAGENET_HPARAMS[4]
    assert pk.val_accuracy_ is None
    one = make_task(c=4, shots=1, d=8, val=False)
    assert methods.create("proker").fit(one).beta_ == IMAGENET_HPARAMS[1][0]
    fixed = methods.create("proker", lam=0.5).fit(task64.without_val())
    assert (fixed.beta_, fixed.lam_) == (IMAGENET_HPARAMS[4][0], 0.5)


def test_proker_limits(task64, queries64):
    """λ → ∞: the Tip-style cache on the zero-shot residual; λ → 0: zero-shot."""
    big = methods.create("proker", beta=2.0, lam=1e9, rows="features", dtype="float64")
    big.fit(task64)
    keys = F.l2_normalize(task64.support.features)
    text = F.l2_normalize(task64.text_weights)
    res = torch.eye(task64.n_classes, dtype=torch.float64)[task64.support.labels] - keys @ text.T
    x = F.l2_normalize(queries64)
    tip = x @ text.T + torch.exp(2.0 * (x @ keys.T - 1)) @ res
    torch.testing.assert_close(big.logits(queries64), tip, rtol=1e-6, atol=1e-6)
    small = methods.create("proker", beta=2.0, lam=1e-9, rows="features", dtype="float64")
    small.fit(task64)
    torch.testing.assert_close(small.logits(queries64), x @ text.T, rtol=1e-6, atol=1e-6)


def test_proker_memory_budget(task64, queries64):
    with pytest.raises(MemoryError, match="max_kernel_bytes.*solver='cg'"):
        methods.create("proker", solver="cholesky", max_kernel_bytes=100).fit(task64)
    auto = methods.create(
        "proker", beta=2.0, lam=0.1, max_kernel_bytes=100, tol=1e-12, rows="features",
        dtype="float64",
    ).fit(task64)  # fmt: skip
    assert auto.solver_ == "cg"
    dense = methods.create("proker", beta=2.0, lam=0.1, rows="features", dtype="float64")
    dense.fit(task64)
    assert dense.solver_ == "cholesky"
    torch.testing.assert_close(auto.logits(queries64), dense.logits(queries64))


def test_proker_default_rows_are_the_references_views_where_memory_allows(task64):
    """The released main.py stacks --augment-epoch 10 augmented passes as kernel rows."""
    s = task64.support
    auto = methods.create("proker", beta=2.0, lam=0.1).fit(task64)
    assert auto.rows_ == "views"
    assert auto.centers_.shape == (s.n_views * s.n, 8)
    views = methods.create("proker", beta=2.0, lam=0.1, rows="views").fit(task64)
    assert torch.equal(auto.dual_coef_, views.dual_coef_)
    tight = methods.create("proker", beta=2.0, lam=0.1, max_kernel_bytes=100).fit(task64)
    assert tight.rows_ == "features"
    assert tight.centers_.shape == (s.n, 8)
    no_views = Task(
        task64.classnames,
        task64.text_weights,
        FeatureSet(s.features, s.labels),
        task64.val,
    )
    assert methods.create("proker", beta=2.0, lam=0.1).fit(no_views).rows_ == "features"


def test_proker_rows(task64):
    s = task64.support
    views = methods.create("proker", beta=2.0, lam=0.1, rows="views").fit(task64)
    assert views.centers_.shape == (s.n_views * s.n, 8)
    mean = methods.create("proker", beta=2.0, lam=0.1, rows="mean", dtype="float64").fit(task64)
    torch.testing.assert_close(mean.centers_, F.cache_keys(s.views))


def test_proker_bad_input(task64):
    for kw, msg in [
        ({"rows": "all"}, "rows: expected one of"),
        ({"solver": "lu"}, "solver: expected one of"),
        ({"lam": -1.0}, "lam: expected a positive value"),
        ({"betas": ()}, "betas: expected a non-empty grid"),
        ({"lams": (0.1, 0.0)}, "lams: expected a non-empty grid of positive"),
        ({"n_landmarks": 0}, "n_landmarks: expected a positive integer"),
    ]:
        with pytest.raises(ValueError, match=msg):
            methods.create("proker", **kw).fit(task64)
    with pytest.raises(ValueError, match="lam: expected a positive regularisation"):
        proker_cholesky(torch.zeros(2, 2), torch.zeros(2, 1), beta=1.0, lam=0.0)


@pytest.mark.parametrize(
    "params",
    [
        {"solver": "nystrom", "n_landmarks": 6, "rows": "views"},
        {"solver": "cg", "tol": 1e-10, "n_landmarks": 4},
        {"solver": "eigh"},
    ],
    ids=["nystrom", "cg", "eigh"],
)
def test_proker_search_through_each_solver_picks_the_best_point(params):
    """The conformance suite's selection check (every grid point refitted on its own, the
    first best kept) through the Nyström, CG and eigh search paths, not only Cholesky's."""
    cls = methods.get("proker")
    check_selection(cls, {**cls.quick_params, **params})
    # and the validation accuracy it records is that of the chosen point fitted on its own
    for seed in (0, 3, 5):
        task = make_task(c=4, shots=5, d=8, views=3, seed=seed)
        grid = {"betas": (1.0, 4.0, 9.0), "lams": (0.01, 0.3, 3.0)}
        pk = methods.create("proker", **grid, **params).fit(task)
        alone = methods.create("proker", beta=pk.beta_, lam=pk.lam_, **params).fit(task)
        assert pk.val_accuracy_ == pytest.approx(
            100 * alone.score(task.val.features, task.val.labels)
        )


def test_proker_cg_honours_tol_and_max_iter(task64, queries64):
    dense = methods.create("proker", beta=2.5, lam=0.07, dtype="float64").fit(task64)
    kw = {"beta": 2.5, "lam": 0.07, "solver": "cg", "dtype": "float64", "n_landmarks": 2}
    tight = methods.create("proker", tol=1e-13, **kw).fit(task64)
    loose = methods.create("proker", tol=1e-2, **kw).fit(task64)
    capped = methods.create("proker", tol=1e-13, max_iter=1, **kw).fit(task64)
    exact = dense.logits(queries64)
    assert capped.cg_iterations_ == 1
    assert loose.cg_iterations_ < tight.cg_iterations_
    torch.testing.assert_close(tight.logits(queries64), exact, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(loose.logits(queries64), exact, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(capped.logits(queries64), exact, rtol=1e-6, atol=1e-6)
