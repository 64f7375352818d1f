"""ProKeR by decomposition: ``kernel_eigh`` / ``proker_eigh``, the eigh search against the
Cholesky search (same point, same logits, same first-best rule), one decomposition per β,
``auto`` keeping Cholesky, and the memory budget of the eigh path."""

import re

import numpy as np
import pytest
import torch

from fewclip import methods
from fewclip.errors import BudgetError
from fewclip.functional import l2_normalize
from fewclip.methods import proker
from fewclip.methods.proker import kernel_eigh, proker_cholesky, proker_eigh
from fewclip.task import FeatureSet, Task
from fewclip.testing import SyntheticWorld

# LAPACK's eigh synchronises its threads at every column: on a shared machine a second thread
# only stalls it (tests/methods/conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _task(seed, n_val=25, views=3, dtype=torch.float64):
    """4 classes × 5 shots in 8 dims, ``views`` views and ``n_val`` validation images a class,
    so that validation accuracies are fine-grained enough to tell grid points apart."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(4, 8, generator=g, dtype=dtype)
    labels = torch.arange(4).repeat_interleave(5)
    feats = 3 * (means[labels] + 0.7 * torch.randn(20, 8, generator=g, dtype=dtype))
    bank = feats + 0.3 * torch.randn(views, 20, 8, generator=g, dtype=dtype)
    vy = torch.arange(4).repeat_interleave(n_val)
    vx = 3 * (means[vy] + 0.7 * torch.randn(len(vy), 8, generator=g, dtype=dtype))
    text = means + torch.randn(4, 8, generator=g, dtype=dtype)
    return Task(
        [f"c{i}" for i in range(4)], text, FeatureSet(feats, labels, bank), FeatureSet(vx, vy)
    )


def _val_counts(task, betas, lams):
    """Validation images right at every (β, λ), ProKeR's closed form by numpy's solver."""
    keys = _unit(task.support.features.numpy())
    text = _unit(task.text_weights.numpy())
    res = np.eye(task.n_classes)[task.support.labels.numpy()] - keys @ text.T
    xv, yv = _unit(task.val.features.numpy()), task.val.labels.numpy()
    counts = np.zeros((len(betas), len(lams)), dtype=int)
    for i, beta in enumerate(betas):
        k = np.exp(beta * (keys @ keys.T - 1.0))
        kv = np.exp(beta * (xv @ keys.T - 1.0))
        for j, lam in enumerate(lams):
            alpha = np.linalg.solve(k / lam + np.eye(len(keys)), res)
            counts[i, j] = int(((xv @ text.T + kv @ alpha).argmax(1) == yv).sum())
    return counts


def _keys(m, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return l2_normalize(torch.randn(m, d, generator=g, dtype=torch.float64) + 0.5)


# -- the decomposition --------------------------------------------------------------------


def test_kernel_eigh_decomposes_the_kernel_in_its_own_buffer():
    keys = _keys(50)
    out = torch.empty(50, 50, dtype=torch.float64)
    evals, evecs = kernel_eigh(keys, beta=3.0, out=out)
    assert evecs.data_ptr() == out.data_ptr()  # the kernel's matrix now holds U
    kernel = torch.exp(3.0 * (keys @ keys.T - 1.0))
    torch.testing.assert_close((evecs * evals) @ evecs.T, kernel, rtol=0, atol=1e-12)
    torch.testing.assert_close(evecs.T @ evecs, torch.eye(50, dtype=torch.float64))
    assert bool((evals[1:] >= evals[:-1]).all())
    alone, _ = kernel_eigh(keys, beta=3.0)  # without a buffer: the same decomposition
    torch.testing.assert_close(alone, evals, rtol=0, atol=0)


def test_kernel_eigh_sets_eigenvalues_rounded_below_zero_to_zero():
    """Ten copies of each of three rows: a kernel of rank 3 whose 27 zero eigenvalues come out
    of LAPACK on both sides of 0."""
    keys = _keys(3).repeat(10, 1)
    raw = torch.linalg.eigvalsh(torch.exp(0.5 * (keys @ keys.T - 1.0)))
    assert bool((raw < 0).any())
    evals, _ = kernel_eigh(keys, beta=0.5)
    assert float(evals.min()) == 0.0
    assert int((evals > 1e-10).sum()) == 3


@pytest.mark.parametrize("lam", [1e-3, 0.07, 1.0, 30.0])
def test_proker_eigh_is_the_cholesky_solution(lam):
    keys = _keys(80)
    res = torch.randn(80, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    evals, evecs = kernel_eigh(keys, beta=2.0)
    chol = proker_cholesky(keys @ keys.T - 1.0, res, beta=2.0, lam=lam)
    torch.testing.assert_close(proker_eigh(evals, evecs, res, lam=lam), chol)


def test_proker_eigh_returns_the_residuals_dtype_and_refuses_lam_0():
    keys = _keys(20)
    evals, evecs = kernel_eigh(keys, beta=2.0)
    res32 = torch.ones(20, 3)
    assert proker_eigh(evals, evecs, res32, lam=0.1).dtype == torch.float32
    with pytest.raises(ValueError, match=r"^lam: expected a positive regularisation, found 0.0$"):
        proker_eigh(evals, evecs, res32, lam=0.0)


# -- the search ---------------------------------------------------------------------------


@pytest.mark.parametrize("rows", ["features", "views"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_the_eigh_search_picks_the_cholesky_searchs_point_with_its_logits(seed, rows):
    task = _task(seed)
    kw = {"rows": rows, "dtype": "float64"}
    chol = methods.create("proker", solver="cholesky", **kw).fit(task)
    eigh = methods.create("proker", solver="eigh", **kw).fit(task)
    assert (eigh.solver_, chol.solver_) == ("eigh", "cholesky")
    assert (eigh.beta_, eigh.lam_, eigh.val_accuracy_) == (
        chol.beta_,
        chol.lam_,
        chol.val_accuracy_,
    )
    x = torch.cat([task.val.features, task.support.features])
    torch.testing.assert_close(eigh.logits(x), chol.logits(x), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(eigh.dual_coef_, chol.dual_coef_, rtol=1e-8, atol=1e-9)


def test_the_eigh_search_keeps_the_first_of_tied_best_points():
    """Every grid point scored by numpy's solver; on this draw the best count is reached by
    several points, and the search keeps the first in β-outer, λ-inner order."""
    task = _task(5, n_val=3)
    betas, lams = (1.0, 3.0, 8.0), (0.003, 0.03, 0.3, 3.0)
    counts = _val_counts(task, betas, lams)
    assert int((counts == counts.max()).sum()) > 1  # a tie
    i, j = np.unravel_index(int(np.argmax(counts)), counts.shape)
    assert (i, j) != (0, 0)  # and not simply the first point
    pk = methods.create(
        "proker", betas=betas, lams=lams, solver="eigh", rows="features", dtype="float64"
    ).fit(task)
    assert (pk.beta_, pk.lam_) == (betas[i], lams[j])
    assert pk.val_accuracy_ == pytest.approx(100.0 * counts[i, j] / task.val.n)


def test_float32_searches_agree_on_a_clip_like_task():
    """640 view rows of a synthetic CLIP-like world in float32, the default 10 × 10 grid; the
    chosen point is neither the grid's first nor a perfect score."""
    world = SyntheticWorld(10, 64, seed=0, sep=0.2, spread=0.06)
    task = world.task(16, seed=1, views=4)
    chol = methods.create("proker", solver="cholesky", rows="views").fit(task)
    eigh = methods.create("proker", solver="eigh", rows="views").fit(task)
    assert chol.centers_.shape[0] == 640
    assert (chol.beta_, chol.lam_, chol.val_accuracy_) == (10.0, 0.03, 87.5)
    assert (eigh.beta_, eigh.lam_, eigh.val_accuracy_) == (
        chol.beta_,
        chol.lam_,
        chol.val_accuracy_,
    )
    test = world.test_set()
    ref = chol.logits(test.features)
    torch.testing.assert_close(eigh.logits(test.features), ref, rtol=0, atol=1e-5 * ref.abs().max())


def test_the_eigh_search_decomposes_once_per_beta_and_solves_nothing_after(monkeypatch):
    calls = []
    original = proker.kernel_eigh

    def counting(keys, *, beta, out=None):
        calls.append(beta)
        return original(keys, beta=beta, out=out)

    def no_solve(*args, **kwargs):
        raise AssertionError("the eigh search needs no solve after the search")

    monkeypatch.setattr(proker, "kernel_eigh", counting)
    monkeypatch.setattr(proker, "proker_cholesky", no_solve)
    monkeypatch.setattr(proker, "proker_eigh", no_solve)
    betas = (1.0, 2.0, 5.0)
    pk = methods.create("proker", betas=betas, solver="eigh", dtype="float64").fit(_task(0))
    assert calls == list(betas)
    monkeypatch.undo()
    # the coefficients kept from the search are those of the chosen point fitted on its own
    alone = methods.create(
        "proker", beta=pk.beta_, lam=pk.lam_, solver="eigh", dtype="float64"
    ).fit(_task(0))
    torch.testing.assert_close(pk.dual_coef_, alone.dual_coef_, rtol=1e-10, atol=1e-12)
    assert pk.val_accuracy_ == pytest.approx(
        100 * alone.score(_task(0).val.features, _task(0).val.labels)
    )


def test_a_fixed_point_fit_through_eigh_is_the_cholesky_fit():
    task = _task(1)
    kw = {"beta": 2.5, "lam": 0.02, "dtype": "float64"}
    eigh = methods.create("proker", solver="eigh", **kw).fit(task)
    chol = methods.create("proker", solver="cholesky", **kw).fit(task)
    assert eigh.solver_ == "eigh"
    assert eigh.val_accuracy_ is None
    torch.testing.assert_close(eigh.dual_coef_, chol.dual_coef_, rtol=1e-8, atol=1e-10)


def test_an_eigh_fit_saves_and_loads(tmp_path):
    task = _task(2)
    pk = methods.create("proker", betas=(1.0, 4.0), solver="eigh").fit(task)
    pk.save(tmp_path / "pk")
    back = methods.load(tmp_path / "pk")
    assert back.solver_ == "eigh"
    assert torch.equal(back.logits(task.val.features), pk.logits(task.val.features))


# -- the auto rule and the budget ---------------------------------------------------------


def test_auto_never_decomposes():
    """``auto`` keeps Cholesky for a search over many λ too (eigh is opt-in): measured, the
    decomposition is not reliably faster on a CPU."""
    task = _task(0)
    lams = tuple(10.0 ** (k / 4) for k in range(-12, 8))  # 20 λ
    kw = {"rows": "views", "dtype": "float64"}
    assert methods.create("proker", lams=lams, **kw).fit(task).solver_ == "cholesky"
    over = methods.create("proker", lams=lams, max_kernel_bytes=2 * 60 * 60 * 8 - 1, **kw)
    assert over.fit(task).solver_ == "cg"


def test_eigh_fits_exactly_3_m_squared_numbers():
    task = _task(0)
    kw = {"beta": 2.0, "lam": 0.1, "rows": "features", "solver": "eigh"}
    need = 3 * 20 * 20 * 4
    assert methods.create("proker", max_kernel_bytes=need, **kw).fit(task).solver_ == "eigh"
    with pytest.raises(BudgetError, match="solver='eigh': 20 support rows"):
        methods.create("proker", max_kernel_bytes=need - 1, **kw).fit(task)


def test_eigh_over_budget_message_word_for_word():
    """16,384 float32 rows need 3·16384²·4 bytes = 3.0 GiB."""
    n = 16384
    labels = torch.arange(n) % 2
    feats = torch.randn(n, 4, generator=torch.Generator().manual_seed(0))
    task = Task(["a", "b"], torch.eye(2, 4), FeatureSet(feats, labels))
    message = (
        "solver='eigh': 16384 support rows need 3.0 GiB for the kernel's eigenvectors and "
        "LAPACK's workspace, over max_kernel_bytes=2.0 GiB; use solver='cholesky' (2·M² "
        "numbers), solver='cg' (exact, chunked) or solver='nystrom' (approximate)"
    )
    pk = methods.create("proker", beta=1.0, lam=0.1, solver="eigh")
    with pytest.raises(BudgetError, match=f"^{re.escape(message)}$"):
        pk.fit(task)
