"""LP++ behaviour beyond tests/methods/test_lp_pp.py.

- ``largest_eigenvalue``: the true λ_max on hand-checked matrices (square, wide, a zero column,
  the identity, zeros), estimates that are Rayleigh quotients (never above λ_max), and its
  stopping rule (relative change ``<= tol``, at most ``max_iter`` power steps) against the
  closed-form Rayleigh quotients of a diagonal Gram matrix;
- the training rows: ``use_views`` adds every stored view as extra rows (initialisation and
  step sizes against numpy), and a float32 LP++ computes in float32 whatever the task's dtype;
- the edges of the hyper-parameter ranges (``alpha_every=1``, ``momentum=0``) against a numpy
  re-implementation of the updates;
- validation: only trained epochs compete when there are epochs, a single validation image
  gives 0 % or 100 %, a fit raises no warning, and the epoch choice reported to the
  conformance suite (``_epoch_selection``);
- λ_max when the all-ones vector is another eigenvector (the power iteration once started
  there, and returned the smaller eigenvalue).
"""

import warnings

import numpy as np
import pytest
import torch
from tests.methods._helpers import make_clustered_task as make_task
from tests.methods._helpers import np_unit

from fewclip import functional as F
from fewclip import methods
from fewclip.methods.lp_pp import largest_eigenvalue
from fewclip.task import FeatureSet, Task


# -- largest_eigenvalue ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        # square: xᵀx = diag(8, 2), x xᵀ = [[5, -3], [-3, 5]] (λ = 8 on (1, −1), 2 on (1, 1))
        ([[2.0, 1.0], [-2.0, 1.0]], 8.0),
        # wide (N < D): xᵀx = [[5, -3, 0], [-3, 5, 0], [0, 0, 0]], x xᵀ = diag(8, 2)
        ([[2.0, -2.0, 0.0], [1.0, 1.0, 0.0]], 8.0),
        # a zero column: xᵀx = diag(2, 0), whose Rayleigh quotient at (1, 1)/√2 is exactly 1
        ([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]], 2.0),
        # the identity: every power step returns a unit vector
        (np.eye(4).tolist(), 1.0),
        # all zeros
        ([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]], 0.0),
    ],
    ids=["square", "wide", "zero-column", "identity", "zeros"],
)
def test_largest_eigenvalue_of_hand_checked_matrices(rows, expected):
    x = torch.tensor(rows, dtype=torch.float64)
    assert expected == pytest.approx(np.linalg.eigvalsh(x.numpy().T @ x.numpy()).max(), abs=1e-12)
    assert largest_eigenvalue(x) == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("max_iter", [1, 2, 3, 5])
def test_largest_eigenvalue_estimates_never_exceed_lambda_max(max_iter):
    """Each estimate is a Rayleigh quotient vᵀGv/vᵀv, so at most λ_max(G), however early the
    iteration is stopped."""
    x = torch.tensor([[2.0, 1.0], [-2.0, 1.0]], dtype=torch.float64)  # λ_max(xᵀx) = 8
    got = largest_eigenvalue(x, max_iter=max_iter)
    assert 0.0 < got <= 8.0 * (1 + 1e-12)


def _power_iteration_on_diagonal(g, tol, max_iter):
    """Power iteration from the documented start v (0.5 + U[0, 1), generator seeded 0) on
    G = diag(g) in closed form: step k's Rayleigh quotient is Σ v_i² g_i^(2k+1) / Σ v_i² g_i^(2k);
    stop at the first one within ``tol`` (relative, ``<=``) of the previous one (0 before the
    first), else after ``max_iter``."""
    g = np.asarray(g, dtype=np.float64)
    start = torch.rand(len(g), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    w = (start.numpy() + 0.5) ** 2
    q = g / g.max()
    value = 0.0
    for k in range(max_iter):
        p = w * q ** (2 * k)
        new = g.max() * (p * q).sum() / p.sum()
        if abs(new - value) <= tol * abs(new):
            return new
        value = new
    return value


@pytest.mark.parametrize(
    ("g", "tol"),
    [
        ((4.0, 3.99), 1e-10),  # stops after ~2300 steps, 2e-8 short of λ_max = 4
        ((100.0, 99.0), 1e-10),  # a large λ: the tolerance is relative
        ((100.0, 99.0), 1e-6),
        ((0.01, 0.0099), 1e-10),  # a small λ
        ((3.0, 1.0), 1.0),  # tol = 1: the first estimate changes by exactly 100 % from 0
    ],
)
def test_largest_eigenvalue_stops_at_the_relative_tolerance(g, tol):
    """A slowly converging power iteration stops at the first Rayleigh quotient whose relative
    change is at most ``tol``: the result is that quotient, not λ_max itself."""
    x = torch.diag(torch.tensor(g, dtype=torch.float64).sqrt())
    expected = _power_iteration_on_diagonal(np.diag(x.numpy()) ** 2, tol, 10_000)
    got = largest_eigenvalue(x, tol=tol)
    assert got == pytest.approx(expected, rel=1e-13)
    if tol < 1:
        assert got != pytest.approx(max(g), rel=1e-9)  # stopped short of the limit


def test_largest_eigenvalue_stops_after_ten_thousand_steps_by_default():
    """Eigenvalues 1 and 1 − 1e-4: after the default 10 000 power steps the Rayleigh quotient
    still changes by ~3e-9 a step (more than tol), and the last one is returned."""
    g = (1.0, 1.0 - 1e-4)
    x = torch.diag(torch.tensor(g, dtype=torch.float64).sqrt())
    gram_diag = np.diag(x.numpy()) ** 2
    expected = _power_iteration_on_diagonal(gram_diag, 1e-10, 10_000)
    assert expected != pytest.approx(
        _power_iteration_on_diagonal(gram_diag, 1e-10, 10_001), rel=1e-10
    )
    assert largest_eigenvalue(x) == pytest.approx(expected, rel=1e-13)


# -- the training rows ---------------------------------------------------------------------------
@pytest.fixture
def task64():
    return make_task(c=3, shots=4, d=8, views=2, seed=4, dtype=torch.float64)


def _np_rows(task, use_views):
    """The L2-normalised training rows and their labels: the features, then each stored view."""
    s = task.support
    parts = [s.features.numpy()]
    if use_views and s.views is not None:
        parts += list(s.views.numpy())
    x = np_unit(np.concatenate(parts))
    y = np.tile(s.labels.numpy(), len(parts))
    return x, y


def _np_lp_pp(task, epochs, *, use_views=False, alpha_every=10, momentum=0.9):
    """LP++ in numpy from its documented rules: (W, b, α) after ``epochs`` epochs and the two
    step sizes. w_k = (images of k) · (mean of class k's rows), b = 0, α_k = 250 · mean over
    classes of each class's rows against its own text; full-batch heavy-ball steps on (W, b)
    of size 4N/λ_max(XᵀX), an α step of size N/(4 max_k Σ_i z_ik²) every ``alpha_every``."""
    x, y = _np_rows(task, use_views)
    t = np_unit(task.text_weights.numpy())
    c, n = task.n_classes, len(x)
    images = np.bincount(task.support.labels.numpy(), minlength=c)
    onehot = np.eye(c)[y]
    z = x @ t.T
    w = np.stack([x[y == k].mean(0) * images[k] for k in range(c)])
    b = np.zeros(c)
    a = np.full(c, 250 * np.mean([z[y == k, k].mean() for k in range(c)]))
    lr_w = 4 * n / np.linalg.eigvalsh(x.T @ x).max()
    lr_a = n / (4 * (z**2).sum(0).max())
    mw = mb = None
    for epoch in range(1, epochs + 1):
        logits = x @ w.T + b + z * a
        p = np.exp(logits - logits.max(1, keepdims=True))
        g = (p / p.sum(1, keepdims=True) - onehot) / n
        gw, gb = g.T @ x, g.sum(0)
        if epoch % alpha_every == 0:
            a = a - lr_a * (g * z).sum(0)
        mw = gw if mw is None else momentum * mw + gw
        mb = gb if mb is None else momentum * mb + gb
        w, b = w - lr_w * mw, b - lr_w * mb
    return w, b, a, lr_w, lr_a


def _assert_fit_is(lp, ref):
    w, b, a, lr_w, lr_a = ref
    np.testing.assert_allclose(lp.coef_.numpy(), w, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(lp.intercept_.numpy(), b, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(lp.text_coef_.numpy(), a, rtol=1e-9, atol=1e-9)
    assert lp.lr_w_ == pytest.approx(lr_w, rel=1e-9)
    assert lp.lr_alpha_ == pytest.approx(lr_a, rel=1e-9)


@pytest.mark.parametrize("epochs", [0, 12])
def test_use_views_trains_on_every_stored_view_as_extra_rows(task64, epochs):
    """With ``use_views`` the 2 stored views join the 12 images: 36 rows, in the initial
    weights (class means of all rows times the image counts), the step sizes and the updates."""
    lp = methods.create("lp++", epochs=epochs, use_views=True, dtype="float64")
    _assert_fit_is(lp.fit(task64.without_val()), _np_lp_pp(task64, epochs, use_views=True))
    plain = methods.create("lp++", epochs=epochs, dtype="float64").fit(task64.without_val())
    assert plain.lr_w_ != pytest.approx(lp.lr_w_, rel=1e-3)  # the views did change the fit


def test_use_views_without_stored_views_trains_on_the_images(task64):
    s = task64.support
    bare = Task(task64.classnames, task64.text_weights, FeatureSet(s.features, s.labels))
    lp = methods.create("lp++", epochs=12, use_views=True, dtype="float64").fit(bare)
    _assert_fit_is(lp, _np_lp_pp(task64, 12, use_views=False))


@pytest.mark.parametrize("use_views", [False, True])
def test_float32_lp_pp_computes_in_float32_whatever_the_task_dtype(task64, use_views):
    """A float32 LP++ casts the task to float32 first: a float64 task and the same task cast
    to float32 give the same fit, bit for bit (and close to the float64 fit)."""
    s = task64.support
    task32 = Task(
        task64.classnames,
        task64.text_weights.float(),
        FeatureSet(s.features.float(), s.labels, s.views.float()),
    )
    kw = {"epochs": 12, "use_views": use_views}
    from64 = methods.create("lp++", **kw).fit(task64.without_val())
    from32 = methods.create("lp++", **kw).fit(task32)
    for name in ("coef_", "intercept_", "text_coef_", "text_weights_"):
        assert getattr(from64, name).dtype == torch.float32
        assert torch.equal(getattr(from64, name), getattr(from32, name)), name
    assert (from64.lr_w_, from64.lr_alpha_) == (from32.lr_w_, from32.lr_alpha_)
    ref = methods.create("lp++", dtype="float64", **kw).fit(task64.without_val())
    torch.testing.assert_close(from64.coef_.double(), ref.coef_, rtol=1e-4, atol=1e-4)


# -- the edges of the hyper-parameter ranges -------------------------------------------------------
@pytest.mark.parametrize(
    "kw",
    [{"alpha_every": 1}, {"momentum": 0.0}, {"alpha_every": 1, "momentum": 0.0}],
    ids=["alpha-every-epoch", "no-momentum", "both"],
)
def test_range_edges_are_accepted_and_follow_the_updates(task64, kw):
    """``alpha_every=1`` steps α after every epoch; ``momentum=0`` is plain gradient descent."""
    lp = methods.create("lp++", epochs=6, dtype="float64", **kw).fit(task64.without_val())
    _assert_fit_is(lp, _np_lp_pp(task64, 6, **kw))
    default = _np_lp_pp(task64, 6)
    assert not np.allclose(lp.coef_.numpy(), default[0], rtol=1e-6)  # the setting mattered


# -- validation ----------------------------------------------------------------------------------
def _np_val_accuracy(task, w, b, a):
    xv = np_unit(task.val.features.numpy())
    zv = xv @ np_unit(task.text_weights.numpy()).T
    return float(((xv @ w.T + b + zv * a).argmax(1) == task.val.labels.numpy()).mean())


def test_only_trained_epochs_compete_on_validation():
    """Mislabelled support images (each class under the next class's label): the text-dominated
    start gets every validation image right, training on the wrong labels loses them, and the
    kept epoch is still the best trained one, epoch 1, not the untrained start."""
    g = torch.Generator().manual_seed(22)
    means = torch.randn(3, 8, generator=g, dtype=torch.float64)
    y = torch.arange(3).repeat_interleave(4)
    x = means[y] + 0.8 * torch.randn(12, 8, generator=g, dtype=torch.float64)
    vy = torch.arange(3).repeat_interleave(3)
    vx = means[vy] + 0.8 * torch.randn(9, 8, generator=g, dtype=torch.float64)
    text = F.l2_normalize(means + 0.5 * torch.randn(3, 8, generator=g, dtype=torch.float64))
    task = Task(["a", "b", "c"], text, FeatureSet(x, (y + 1) % 3), FeatureSet(vx, vy))
    untrained = methods.create("lp++", epochs=0, dtype="float64").fit(task)
    assert (untrained.best_epoch_, untrained.val_accuracy_) == (0, 100.0)
    lp = methods.create("lp++", epochs=3, dtype="float64").fit(task)
    accs = [100 * _np_val_accuracy(task, *_np_lp_pp(task, e)[:3]) for e in (1, 2, 3)]
    assert accs == pytest.approx([100 / 3, 0.0, 0.0])
    assert lp.best_epoch_ == 1
    assert lp.val_accuracy_ == pytest.approx(100 / 3)


def test_a_single_validation_image_scores_100_percent_when_right(task64):
    xv, yv = task64.val.features[:1], task64.val.labels[:1]
    one = Task(task64.classnames, task64.text_weights, task64.support, FeatureSet(xv, yv))
    lp = methods.create("lp++", epochs=4, dtype="float64").fit(one)
    assert torch.equal(lp.predict(xv), yv)
    assert lp.val_accuracy_ == 100.0


@pytest.mark.parametrize("val", [True, False])
def test_fit_raises_no_warning(task64, val):
    """No torch warning (e.g. an ``out=`` tensor of the wrong shape being resized)."""
    task = task64 if val else task64.without_val()
    assert task64.val.n != task64.dim  # 6 validation images, 8 dimensions
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        methods.create("lp++", epochs=3).fit(task)


# -- the epoch choice reported to the conformance suite --------------------------------------------
def test_epoch_selection_reports_every_trained_epoch(task64):
    """``(history, chosen, ties, final)``: each trained epoch with its validation accuracy in
    [0, 1], the kept epoch, the latest of equal ones, and the fitted method as that epoch."""
    lp = methods.create("lp++", epochs=5, dtype="float64").fit(task64)
    history, chosen, ties, final = lp._epoch_selection()
    accs = [_np_val_accuracy(task64, *_np_lp_pp(task64, e)[:3]) for e in range(1, 6)]
    assert [e for e, _ in history] == [1, 2, 3, 4, 5]
    assert [s for _, s in history] == pytest.approx(accs)
    assert (chosen, ties, final) == (lp.best_epoch_, "last", True)


def test_no_epoch_selection_without_validation_or_fit(task64, tmp_path):
    assert methods.create("lp++")._epoch_selection() is None  # not fitted
    lp = methods.create("lp++", epochs=3).fit(task64.without_val())
    assert lp._epoch_selection() is None
    fitted = methods.create("lp++", epochs=3).fit(task64)
    loaded = methods.load(fitted.save(tmp_path / "lp"))  # the history is not saved
    assert loaded._epoch_selection() is None


# -- the all-ones vector orthogonal to the top eigenvector --------------------------------------
def test_largest_eigenvalue_when_all_ones_is_an_eigenvector():
    """Support images (1, −1)/√2, (1, −1)/√2 and (1, 1)/√2: FᵀF has eigenvalues 2 on (1, −1)
    and 1 on (1, 1), so LP++'s step size should be 4·3/2 = 6."""
    rows = torch.tensor([[1.0, -1.0], [1.0, -1.0], [1.0, 1.0]], dtype=torch.float64)
    task = Task(["a", "b"], F.l2_normalize(rows[1:]), FeatureSet(rows, torch.tensor([0, 0, 1])))
    lp = methods.create("lp++", epochs=0, dtype="float64").fit(task)
    x = F.l2_normalize(rows)
    assert float(np.linalg.eigvalsh((x.T @ x).numpy()).max()) == pytest.approx(2.0)
    assert lp.lr_w_ == pytest.approx(6.0)
    assert largest_eigenvalue(x) == pytest.approx(2.0)
