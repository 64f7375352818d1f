"""GDA's public statistics functions and its α search, checked case by case.

- ``class_means`` and ``within_class_scatter`` against numpy (one row per class, the fourth
  moment only when asked for);
- ``shared_precision``: its default estimator, the ``"empirical"`` pseudo-inverse, the
  Ledoit–Wolf and OAS shrinkage in their corner cases (one dimension, collinear samples, few
  samples, an isotropic covariance), and its error messages word for word;
- ``GDA``: the error for a support without within-class variation, statistics at the
  requested precision, and the α search (float16 features, float64 grids, validation sets
  that nothing or a single image gets right, what it reports as a search).
"""

import math

import numpy as np
import pytest
import torch
from sklearn.covariance import ledoit_wolf, oas
from tests.methods._helpers import make_shuffled_task
from tests.methods._helpers import np_unit as _np_normalise

from fewclip import methods
from fewclip.errors import InvalidValueError
from fewclip.methods.gda import class_means, shared_precision, within_class_scatter
from fewclip.task import FeatureSet, Task

D64 = torch.float64


def _views(seed, v=3, n=10, d=6, dtype=D64):
    return torch.randn(v, n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _np_scatter(views, labels, n_classes):
    """Pooled within-class scatter of the normalised views, and the class means, in numpy."""
    x = _np_normalise(views.numpy()).reshape(-1, views.shape[-1])
    y = np.tile(labels.numpy(), views.shape[0])
    mus = np.stack([x[y == k].mean(0) for k in range(n_classes)])
    c = x - mus[y]
    return c, mus


def _separable_task(val_features, val_labels, *, d=8, c=3, seed=0):
    """Three well separated classes whose text weights are their centres: zero-shot and the
    discriminant both classify points near a centre as that centre's class."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(c, d, dtype=D64)
    labels = torch.arange(c).repeat_interleave(4)
    feats = centres[labels] + 0.05 * torch.randn(len(labels), d, generator=g, dtype=D64)
    return Task(
        [f"c{i}" for i in range(c)],
        centres,
        FeatureSet(feats, labels),
        FeatureSet(val_features, val_labels),
    )


# -- class_means and within_class_scatter -------------------------------------------------------


def test_class_means_pool_the_normalised_views_of_each_class():
    views = _views(0)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 2])
    _, mus = _np_scatter(views, labels, 3)
    got = class_means(views, labels, 3, dtype=D64)
    np.testing.assert_allclose(got.numpy(), mus, rtol=1e-12, atol=1e-14)


def test_class_means_has_a_row_for_every_class_even_one_without_samples():
    """Asked for 4 classes when the labels only use 0..2, the result still has 4 rows (the
    empty class's mean is undefined: NaN); the others are the plain means."""
    views = _views(1)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 2])
    _, mus = _np_scatter(views, labels, 3)
    got = class_means(views, labels, 4, dtype=D64)
    assert got.shape == (4, 6)
    np.testing.assert_allclose(got[:3].numpy(), mus, rtol=1e-12, atol=1e-14)
    assert torch.isnan(got[3]).all()


def test_within_class_scatter_gives_the_fourth_moment_only_when_asked():
    views = _views(2)
    labels = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1, 1, 1])
    c, _ = _np_scatter(views, labels, 2)
    means = class_means(views, labels, 2, dtype=D64)
    scatter, fourth = within_class_scatter(views, labels, means)
    assert fourth is None  # the default: no fourth-moment matrix
    np.testing.assert_allclose(scatter.numpy(), c.T @ c, rtol=1e-12, atol=1e-13)
    scatter2, fourth2 = within_class_scatter(views, labels, means, fourth=True)
    torch.testing.assert_close(scatter2, scatter, rtol=0, atol=0)
    sq = c * c
    np.testing.assert_allclose(fourth2.numpy(), sq.T @ sq, rtol=1e-12, atol=1e-13)


# -- shared_precision: estimators ---------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 30])
def test_shared_precision_default_is_the_papers_estimator(n):
    """``shared_precision(S, n)`` with no estimator named is D·(S + tr(S)/(n − 1)·I)⁻¹, also
    for two samples (n − 1 = 1)."""
    g = torch.Generator().manual_seed(n)
    c = torch.randn(n, 5, generator=g, dtype=D64)
    s = c.T @ c
    expected = 5 * np.linalg.inv(s.numpy() + np.trace(s.numpy()) / (n - 1) * np.eye(5))
    np.testing.assert_allclose(shared_precision(s, n).numpy(), expected, rtol=1e-7)


@pytest.mark.parametrize("n", [2, 30])
def test_shared_precision_empirical_is_the_pseudo_inverse_of_the_covariance(n):
    """``"empirical"`` is (S/(n − 1))⁺: the inverse of the sample covariance for many samples,
    a pseudo-inverse for two (n − 1 = 1)."""
    g = torch.Generator().manual_seed(n)
    c = torch.randn(n, 5, generator=g, dtype=D64)
    s = c.T @ c
    expected = np.linalg.pinv(s.numpy() / (n - 1))
    got = shared_precision(s, n, covariance="empirical").numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-8, atol=1e-10 * np.abs(expected).max())


def test_gda_empirical_matches_an_explicit_computation():
    task = make_shuffled_task(c=3, shots=6, d=6, views=3, seed=4, dtype=D64)
    gda = methods.create("gda", alpha=1.0, covariance="empirical", dtype="float64").fit(task)
    c, mus = _np_scatter(task.support.views, task.support.labels, 3)
    prec = np.linalg.pinv(c.T @ c / (len(c) - 1))
    w = mus @ prec
    b = math.log(1 / 3) - 0.5 * np.einsum("kd,de,ke->k", mus, prec, mus)
    np.testing.assert_allclose(gda.coef_.numpy(), w, rtol=1e-8, atol=1e-9 * np.abs(w).max())
    np.testing.assert_allclose(gda.intercept_.numpy(), b, rtol=1e-8, atol=1e-9 * np.abs(b).max())


def test_ledoit_wolf_in_one_dimension_is_the_inverse_variance():
    """With one feature every shrinkage leaves the variance as it is (sklearn's ledoit_wolf
    returns it unchanged): centred samples ±1 give the precision 1, no error."""
    c = torch.tensor([[1.0], [-1.0], [1.0], [-1.0]], dtype=D64)
    sq = c * c
    p = shared_precision(c.T @ c, 4, covariance="ledoit-wolf", fourth=sq.T @ sq)
    assert float(ledoit_wolf(c.numpy(), assume_centered=True)[0][0, 0]) == 1.0
    torch.testing.assert_close(p, torch.ones(1, 1, dtype=D64), rtol=1e-8, atol=0)


def test_ledoit_wolf_does_not_shrink_collinear_samples():
    """Centred samples that are all ±v (here each class holds two opposite corners of a
    square): sklearn's Ledoit–Wolf shrinkage is 0, so the covariance E stays singular and the
    precision P inverts it where it can: E·P·E = E (full shrinkage would give 2E)."""
    views = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]], dtype=D64)
    labels = torch.tensor([0, 0, 1, 1])
    c, _ = _np_scatter(views, labels, 2)
    assert ledoit_wolf(c, assume_centered=True)[1] == 0.0
    means = class_means(views, labels, 2, dtype=D64)
    scatter, fourth = within_class_scatter(views, labels, means, fourth=True)
    p = shared_precision(scatter, 4, covariance="ledoit-wolf", fourth=fourth)
    e = scatter / 4
    torch.testing.assert_close(e @ p @ e, e, rtol=0, atol=1e-8)


def test_oas_with_few_samples_shrinks_fully_to_the_scaled_identity():
    """Three samples in eight dimensions: sklearn's OAS shrinkage is 1 (its cap), so the
    covariance becomes tr(E)/D·I and the precision D/tr(E)·I."""
    g = torch.Generator().manual_seed(3)
    c = torch.randn(3, 8, generator=g, dtype=D64)
    cov, shrinkage = oas(c.numpy(), assume_centered=True)
    assert shrinkage == 1.0
    p = shared_precision(c.T @ c, 3, covariance="oas")
    np.testing.assert_allclose(p.numpy(), np.linalg.inv(cov), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize(
    "diag",
    [[4.0], [4.0 * (1 + 2.0**-27), 4.0 * (1 - 2.0**-27)]],
    ids=["one-dimension", "isotropic-to-rounding"],
)
def test_oas_of_an_isotropic_covariance_is_its_inverse(diag):
    """E = S/n isotropic (one dimension, or two variances 1 ± 2⁻²⁷ whose spread vanishes in
    the second moment's rounding): OAS shrinks fully onto tr(E)/D·I = I, as in exact
    arithmetic, so P = I (up to the 1e-10 jitter of the Cholesky factorisation)."""
    s = torch.diag(torch.tensor(diag, dtype=D64))
    p = shared_precision(s, 4, covariance="oas")
    torch.testing.assert_close(p, torch.eye(len(diag), dtype=D64), rtol=0, atol=1e-9)


# -- shared_precision: errors -------------------------------------------------------------------


def test_shared_precision_ledoit_wolf_without_the_fourth_moment():
    s = torch.eye(3, dtype=D64)
    with pytest.raises(InvalidValueError) as err:
        shared_precision(s, 5, covariance="ledoit-wolf")
    assert str(err.value) == "fourth: the Ledoit-Wolf shrinkage needs the fourth-moment matrix"


def test_shared_precision_unknown_covariance():
    with pytest.raises(InvalidValueError) as err:
        shared_precision(torch.eye(3, dtype=D64), 5, covariance="shrunk")
    assert str(err.value) == (
        "covariance: expected one of ('ks', 'ledoit-wolf', 'oas', 'empirical'), found 'shrunk'"
    )


def test_shared_precision_that_cannot_be_factorised():
    """A float32 scatter whose trace overflows (samples of norm ~1e19) cannot be inverted:
    a clear error instead of a precision full of NaN."""
    s = torch.diag(torch.tensor([3e38, 3e38], dtype=torch.float32))
    with pytest.raises(InvalidValueError) as err:
        shared_precision(s, 3)
    assert str(err.value) == (
        "gda: the shared covariance of the support cannot be inverted (too few distinct "
        "samples for its dimension). Use the paper's estimator (covariance='ks', CLI: "
        "--param covariance=ks), augmented views (--views 10) or more shots."
    )


# -- GDA.fit ------------------------------------------------------------------------------------


def test_gda_support_without_within_class_variation():
    """One image per class and no views: the whole message, with its remedies."""
    task = make_shuffled_task(c=3, shots=1, d=8, views=1, seed=0)
    s = task.support
    plain = Task(task.classnames, task.text_weights, FeatureSet(s.features, s.labels))
    with pytest.raises(InvalidValueError) as err:
        methods.create("gda").fit(plain)
    assert str(err.value) == (
        "gda: the support has no within-class variation (one image per class and no "
        "augmented views, or identical rows), so the shared covariance cannot be "
        "estimated. Give augmented views (CLI: --views 10; Python: FeatureSet(..., "
        "views=...)) or at least two images per class."
    )


def test_float32_gda_computes_its_statistics_in_float32():
    """The 'empirical' pseudo-inverse drops directions whose variance is below the compute
    precision. A within-class direction with a variance 1e-8 of the others' is below float32's
    resolution (4·2⁻²³ ≈ 5e-7) but not float64's: the float32 GDA ignores it, as a pseudo-inverse
    at float32 resolution does, while the float64 GDA inverts it (huge weights there)."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(2).repeat_interleave(8)
    centres = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]], dtype=D64)
    noise = torch.randn(16, 4, generator=g, dtype=D64) * torch.tensor([0.1, 0.1, 0.1, 1e-5])
    feats = (centres[labels] + noise).float()
    task = Task(["a", "b"], centres.float(), FeatureSet(feats, labels))
    kw = {"alpha": 1.0, "covariance": "empirical", "use_views": False}
    c, mus = _np_scatter(feats[None].double(), labels, 2)
    cov = c.T @ c / (len(c) - 1)
    eps32 = float(np.finfo(np.float32).eps)
    w32 = mus @ np.linalg.pinv(cov, rcond=4 * eps32, hermitian=True)
    w64 = mus @ np.linalg.pinv(cov, rcond=4 * float(np.finfo(np.float64).eps), hermitian=True)
    assert np.abs(w64).max() > 1000 * np.abs(w32).max()  # the direction matters
    got32 = methods.create("gda", dtype="float32", **kw).fit(task).coef_
    np.testing.assert_allclose(got32.double().numpy(), w32, rtol=0, atol=1e-3 * np.abs(w32).max())
    got64 = methods.create("gda", dtype="float64", **kw).fit(task).coef_
    np.testing.assert_allclose(got64.numpy(), w64, rtol=1e-3, atol=1e-3 * np.abs(w64).max())


# -- GDA's α search -----------------------------------------------------------------------------


def test_gda_search_on_float16_features_is_the_search_on_their_float32_copy():
    """CLIP features often come in float16: a float32 GDA casts them and searches α in
    float32, exactly as on a float32 copy of the same task (searching in float16 picks
    another α here)."""

    def cast(task, dtype):
        s, v = task.support, task.val
        support = FeatureSet(s.features.to(dtype), s.labels, s.views.to(dtype))
        val = FeatureSet(v.features.to(dtype), v.labels)
        return Task(task.classnames, task.text_weights.to(dtype), support, val)

    half = cast(make_shuffled_task(c=5, shots=4, d=16, views=3, seed=10), torch.float16)
    copy = cast(half, torch.float32)
    a = methods.create("gda").fit(half)
    b = methods.create("gda").fit(copy)
    torch.testing.assert_close(a.coef_, b.coef_, rtol=0, atol=0)
    assert (a.alpha_, a.val_accuracy_) == (b.alpha_, b.val_accuracy_)
    assert a.alpha_ == 100.0


def _reference_search(gda, task, alphas, default):
    """The reference loop in float64: the first α with the strictly best validation accuracy,
    ``default`` when none gets anything right."""
    x = _np_normalise(task.val.features.double().numpy())
    zs = 100 * x @ _np_normalise(task.text_weights.double().numpy()).T
    extra = x @ gda.coef_.double().numpy().T + gda.intercept_.double().numpy()
    best_acc, best_alpha = 0.0, default
    for a in alphas:
        acc = 100.0 * float(((zs + a * extra).argmax(1) == task.val.labels.numpy()).mean())
        if acc > best_acc:
            best_acc, best_alpha = acc, a
    return best_alpha, best_acc


def test_float64_gda_searches_alphas_beyond_float32_range():
    """A float64 GDA takes its grid in float64: α = 1e39 (infinite in float32) is an ordinary
    grid point, where the discriminant alone decides, as the float64 reference loop finds."""
    task = make_shuffled_task(c=4, shots=4, d=8, views=2, seed=1, dtype=D64)
    gda = methods.create("gda", alphas=(1e39,), default_alpha=0.37, dtype="float64").fit(task)
    alpha, acc = _reference_search(gda, task, (1e39,), 0.37)
    assert acc > 0
    assert (gda.alpha_, gda.val_accuracy_) == (alpha, pytest.approx(acc))
    assert gda.alpha_ == 1e39


def test_gda_keeps_the_default_alpha_when_no_alpha_gets_any_image_right():
    """Validation labels shifted by one class on a well separated task: every α gets every
    image wrong, so α stays ``default_alpha`` with 0 % and no search is reported."""
    g = torch.Generator().manual_seed(1)
    vy = torch.arange(3).repeat_interleave(2)
    vx = torch.eye(3, 8, dtype=D64)[vy] + 0.05 * torch.randn(6, 8, generator=g, dtype=D64)
    task = _separable_task(vx, (vy + 1) % 3)
    gda = methods.create("gda", default_alpha=0.37, dtype="float64").fit(task)
    assert _reference_search(gda, task, gda.alphas, 0.37) == (0.37, 0.0)
    assert gda.alpha_ == 0.37
    assert gda.val_accuracy_ == 0.0
    assert gda._selection() is None


def test_gda_with_a_single_validation_image():
    """One validation image, classified right from the first α on: that α is kept and the
    validation accuracy is 100 %."""
    vx = torch.tensor([[0.0, 1.0, 0.1, 0, 0, 0, 0, 0]], dtype=D64)
    task = _separable_task(vx, torch.tensor([1]))
    gda = methods.create("gda", default_alpha=0.37, dtype="float64").fit(task)
    assert _reference_search(gda, task, gda.alphas, 0.37) == (1e-4, 100.0)
    assert gda.alpha_ == 1e-4
    assert gda.val_accuracy_ == 100.0
    assert gda._selection() == ([{"alpha": float(a)} for a in gda.alphas], {"alpha": 1e-4})


def test_gda_reports_no_search_without_a_validation_set():
    """Without ``task.val`` α is ``default_alpha`` and nothing was chosen by a search
    (``Method._selection`` is None, what the conformance suite reads)."""
    task = make_shuffled_task(c=3, shots=4, d=8, views=2, seed=0, val=False)
    gda = methods.create("gda", default_alpha=0.37).fit(task)
    assert gda.alpha_ == 0.37
    assert gda.val_accuracy_ is None
    assert gda._selection() is None


# -- an isotropic covariance -------------------------------------------------------------------


def test_ledoit_wolf_of_an_isotropic_covariance_is_its_inverse():
    """Centred samples ±e₁, ±e₂: E = I/2 is already isotropic (δ = ‖E − μI‖² = 0) while the
    fourth-moment term β is positive. sklearn's ledoit_wolf caps β at δ first and returns
    shrinkage 0 (E unchanged), so the precision is 2·I; GDA on these four images fits."""
    feats = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]], dtype=D64)
    labels = torch.tensor([0, 0, 1, 1])
    cov, shrinkage = ledoit_wolf(feats.numpy(), assume_centered=True)
    assert shrinkage == 0
    means = class_means(feats[None], labels, 2, dtype=D64)
    scatter, fourth = within_class_scatter(feats[None], labels, means, fourth=True)
    p = shared_precision(scatter, 4, covariance="ledoit-wolf", fourth=fourth)
    np.testing.assert_allclose(p.numpy(), np.linalg.inv(cov), rtol=1e-8)
    task = Task(["a", "b"], torch.eye(2, dtype=D64), FeatureSet(feats, labels))
    methods.create("gda", alpha=1.0, covariance="ledoit-wolf", dtype="float64").fit(task)
