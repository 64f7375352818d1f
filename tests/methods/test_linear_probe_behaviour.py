"""The linear probe's solver and its C sweep, step for step.

``SoftmaxObjective`` (scikit-learn's objective divided by C·N, with a hand-written gradient)
is checked against autograd. ``fit_logistic_regression`` is then checked against a plain loop
written from its definition over that objective (full-batch torch L-BFGS with a strong-Wolfe
line search, a unit initial step, a history of 20 pairs, stopping at a largest gradient entry
below ``tol``, a loss change below 1e-12 or ``max_iter`` iterations): on problems that take
tens to hundreds of iterations every one of those settings changes the result. (The loop
must use the same objective to be compared bit for bit: over hundreds of iterations of an
ill-conditioned problem, gradients that differ in the last bit end 1e-5 apart.) Then its
default iteration cap and warm start, and how ``LinearProbe`` uses ``max_iter``, the warm
start along its sweep and ``val_accuracy_``.
"""

import pytest
import torch
from tests.methods._helpers import make_shuffled_task

from fewclip import methods
from fewclip.functional import l2_normalize
from fewclip.methods.linear_probe import SoftmaxObjective, fit_logistic_regression, path_start

D64 = torch.float64

pytestmark = pytest.mark.usefixtures("one_thread")


def _plain_lbfgs(x, y, n_classes, C, *, init=None, max_iter=500, tol=1e-6, iters=None):
    """Minimise mean CE(W·x + b, y) + ‖W‖²/(2·C·N) with torch's L-BFGS; the number of
    iterations it ran goes to ``iters["n"]`` when a dict is given."""
    n, d = x.shape
    if init is None:
        init = (torch.zeros(n_classes, d, dtype=x.dtype), torch.zeros(n_classes, dtype=x.dtype))
    w0, b0 = init
    w, b = w0.clone(), b0.clone()
    w.grad, b.grad = torch.zeros_like(w), torch.zeros_like(b)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=tol,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )
    objective = SoftmaxObjective(x, y, n_classes, 1.0 / (2.0 * C * n))
    opt.step(lambda: objective(w, b))
    if iters is not None:
        iters["n"] = opt.state[w]["n_iter"]
    return w, b


def _ill_conditioned(seed, spread):
    """30 points in 6 dimensions, 3 random classes, feature scales from 1 to ``spread``: the
    larger the spread, the more L-BFGS iterations the fit takes."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(0, torch.log10(torch.tensor(spread)), 6, dtype=D64)
    x = torch.randn(30, 6, generator=g, dtype=D64) * scales
    y = torch.randint(0, 3, (30,), generator=g)
    return x, y


def _assert_same(got, expected):
    torch.testing.assert_close(got[0], expected[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got[1], expected[1], rtol=1e-12, atol=1e-12)


# -- SoftmaxObjective ---------------------------------------------------------------------------


def _autograd_objective(x, y, w, b, penalty):
    w = w.clone().requires_grad_(True)
    b = b.clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(x @ w.T + b, y) + penalty * (w * w).sum()
    loss.backward()
    return loss.detach(), w.grad, b.grad


@pytest.mark.parametrize(("n", "d", "c", "scale"), [(40, 6, 3, 1.0), (300, 16, 12, 30.0)])
def test_softmax_objective_is_the_cross_entropy_and_its_autograd_gradient(n, d, c, scale):
    """Loss and gradient equal autograd's at random points, including weights large enough
    (scale 30) that an exp without the row maximum taken out would overflow; the buffer it
    reuses does not leak one call into the next."""
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, d, generator=g, dtype=D64)
    y = torch.randint(0, c, (n,), generator=g)
    objective = SoftmaxObjective(x, y, c, penalty=0.37)
    for _ in range(3):
        w = scale * torch.randn(c, d, generator=g, dtype=D64)
        b = scale * torch.randn(c, generator=g, dtype=D64)
        w.grad, b.grad = torch.full_like(w, 9.0), torch.full_like(b, 9.0)
        loss = objective(w, b)
        expected = _autograd_objective(x, y, w, b, 0.37)
        torch.testing.assert_close(loss, expected[0], rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(w.grad, expected[1], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(b.grad, expected[2], rtol=1e-12, atol=1e-14)


def test_softmax_objective_in_float32_stays_finite_where_a_naive_softmax_overflows():
    x = torch.ones(4, 2)
    y = torch.tensor([0, 1, 1, 0])
    w = torch.tensor([[60.0, 60.0], [0.0, 0.0], [-60.0, -60.0]])  # logits 120, 0, -120
    b = torch.zeros(3)
    w.grad, b.grad = torch.empty_like(w), torch.empty_like(b)
    loss = SoftmaxObjective(x, y, 3, penalty=0.0)(w, b)
    # half the rows are right with certainty (loss 0), half wrong by 120
    assert float(loss) == pytest.approx(60.0)
    torch.testing.assert_close(b.grad, torch.tensor([0.5, -0.5, 0.0]))


# -- fit_logistic_regression --------------------------------------------------------------------


@pytest.mark.parametrize(("seed", "spread", "C"), [(0, 10.0, 1.0), (1, 100.0, 30.0)])
def test_fit_logistic_regression_is_the_plain_lbfgs_loop(seed, spread, C):
    x, y = _ill_conditioned(seed, spread)
    _assert_same(fit_logistic_regression(x, y, 3, C=C), _plain_lbfgs(x, y, 3, C))


def test_fit_logistic_regression_stops_at_its_tolerance():
    """A looser ``tol`` stops earlier, exactly where the plain loop with that tolerance does."""
    x, y = _ill_conditioned(2, 10.0)
    loose = fit_logistic_regression(x, y, 3, C=1.0, tol=1e-3)
    _assert_same(loose, _plain_lbfgs(x, y, 3, 1.0, tol=1e-3))
    tight = fit_logistic_regression(x, y, 3, C=1.0, tol=1e-9)
    _assert_same(tight, _plain_lbfgs(x, y, 3, 1.0, tol=1e-9))
    assert not torch.allclose(loose[0], tight[0], rtol=0, atol=1e-9)


def test_fit_logistic_regression_stops_after_500_iterations_by_default():
    """A problem that needs far more than 500 L-BFGS iterations (over 1,000 uncapped, so
    that rounding on another CPU cannot bring it under the cap; seed 0 needed 5xx on one
    machine and 427 on another): the default fit is the plain loop capped at 500 (a fit with
    another cap differs)."""
    x, y = _ill_conditioned(1, 1e4)
    uncapped = {}
    _plain_lbfgs(x, y, 3, 1.0, max_iter=5000, iters=uncapped)
    assert uncapped["n"] > 1000
    iters = {}
    capped = _plain_lbfgs(x, y, 3, 1.0, max_iter=500, iters=iters)
    # the cap binds: torch stops at 500 iterations or 625 closure calls (max_eval's default,
    # 1.25 x max_iter), whichever comes first, well before convergence
    assert iters["n"] <= 500 < uncapped["n"]
    assert iters["n"] > 400
    _assert_same(fit_logistic_regression(x, y, 3, C=1.0), capped)
    other = fit_logistic_regression(x, y, 3, C=1.0, max_iter=520)
    assert not torch.allclose(other[0], capped[0], rtol=0, atol=1e-9)


def test_fit_logistic_regression_warm_starts_from_init():
    x, y = _ill_conditioned(3, 10.0)
    optimum = fit_logistic_regression(x, y, 3, C=1.0, tol=1e-10)
    # from a solution whose gradient is already below tol, nothing moves
    _assert_same(fit_logistic_regression(x, y, 3, C=1.0, init=optimum, max_iter=1), optimum)
    # from elsewhere, two iterations continue from that point
    start = (0.3 * optimum[0], optimum[1] + 0.5)
    got = fit_logistic_regression(x, y, 3, C=1.0, init=start, max_iter=2)
    _assert_same(got, _plain_lbfgs(x, y, 3, 1.0, init=start, max_iter=2))
    assert not torch.allclose(got[0], _plain_lbfgs(x, y, 3, 1.0, max_iter=2)[0])


def test_fit_logistic_regression_accepts_a_start_that_requires_grad():
    """A start taken from autograd code (``requires_grad=True``) gives the fit from the same
    values; it is not differentiated through, and the result is a plain tensor."""
    x, y = _ill_conditioned(3, 10.0)
    start = (0.1 * torch.ones(3, 6, dtype=D64), 0.2 * torch.ones(3, dtype=D64))
    tracked = tuple(t.clone().requires_grad_(True) for t in start)
    got = fit_logistic_regression(x, y, 3, C=1.0, init=tracked, max_iter=3)
    _assert_same(got, fit_logistic_regression(x, y, 3, C=1.0, init=start, max_iter=3))
    assert not got[0].requires_grad
    assert not got[1].requires_grad


# -- LinearProbe --------------------------------------------------------------------------------


def _support(task):
    return l2_normalize(task.support.features), task.support.labels


def test_linear_probe_with_a_fixed_c_honours_max_iter_and_reports_no_search():
    task = make_shuffled_task(c=3, shots=4, d=8, views=1, seed=0, dtype=D64)
    lp = methods.create("linear-probe", C=2.0, max_iter=3, dtype="float64").fit(task)
    x, y = _support(task)
    _assert_same((lp.coef_, lp.intercept_), _plain_lbfgs(x, y, 3, 2.0, max_iter=3))
    assert lp.C_ == 2.0
    assert lp.val_accuracy_ is None  # a fixed C: no sweep ran, even with a validation set
    assert lp._selection() is None
    without_val = methods.create("linear-probe", dtype="float64").fit(task.without_val())
    assert without_val.C_ == 10.0
    assert without_val.val_accuracy_ is None


def test_linear_probe_sweep_warm_starts_each_fit_with_max_iter_iterations():
    """The sweep fits C = 0.05, then C = 50 starting from the C = 0.05 solution, each with
    ``max_iter`` = 5 L-BFGS iterations. Few images of two classes out of three: the heavily
    regularised fit leans on the biases (the majority class), and C = 50 wins on validation.
    Its weights are the warm-started ones (a fit of C = 50 from zero ends elsewhere)."""
    task = make_shuffled_task(c=3, d=8, views=1, seed=0, per=[8, 2, 2], dtype=D64)
    lp = methods.create("linear-probe", Cs=(50.0, 0.05), max_iter=5, dtype="float64").fit(task)
    x, y = _support(task)
    first = _plain_lbfgs(x, y, 3, 0.05, max_iter=5)
    second = _plain_lbfgs(x, y, 3, 50.0, init=first, max_iter=5)
    xv, yv = l2_normalize(task.val.features), task.val.labels
    acc = [
        100.0 * float(((xv @ w.T + b).argmax(1) == yv).double().mean()) for w, b in (first, second)
    ]
    assert acc[1] > acc[0]
    assert lp.C_ == 50.0
    assert lp.val_accuracy_ == pytest.approx(acc[1])
    _assert_same((lp.coef_, lp.intercept_), second)
    cold = _plain_lbfgs(x, y, 3, 50.0, max_iter=5)
    assert not torch.allclose(cold[0], second[0], atol=1e-3)


def test_path_start_follows_the_secant_in_log_c_by_at_most_one_step():
    w0, b0 = torch.tensor([[1.0, 2.0]]), torch.tensor([0.5])
    w1, b1 = torch.tensor([[3.0, 1.0]]), torch.tensor([1.5])
    assert path_start([], 1.0) is None
    assert path_start([(1.0, w0, b0)], 10.0) == (w0, b0)
    # evenly spaced in log C: one whole secant step
    w, b = path_start([(1.0, w0, b0), (10.0, w1, b1)], 100.0)
    torch.testing.assert_close(w, torch.tensor([[5.0, 0.0]]))
    torch.testing.assert_close(b, torch.tensor([2.5]))
    # log(20/10) / log(10/1) of a step
    r = torch.log10(torch.tensor(2.0)).item()
    w, b = path_start([(1.0, w0, b0), (10.0, w1, b1)], 20.0)
    torch.testing.assert_close(w, w1 + r * (w1 - w0))
    torch.testing.assert_close(b, b1 + r * (b1 - b0))
    # a wider gap than the last one: still one step, not more
    w, _ = path_start([(1.0, w0, b0), (10.0, w1, b1)], 1e4)
    torch.testing.assert_close(w, torch.tensor([[5.0, 0.0]]))
    # only the last two fits count, and a repeated C starts from the last solution
    w, _ = path_start([(0.01, w1, b1), (1.0, w0, b0), (10.0, w1, b1)], 100.0)
    torch.testing.assert_close(w, torch.tensor([[5.0, 0.0]]))
    assert path_start([(1.0, w0, b0), (1.0, w1, b1)], 10.0) == (w1, b1)


def test_linear_probe_sweep_starts_each_fit_on_the_secant_of_the_last_two():
    """C = 0.1, 1 and 10, 5 iterations each: the third fit starts at 2·W₂ − W₁ (10 is as far
    from 1 in log C as 1 from 0.1), wins on validation, and its weights are those of the fit
    from that start, not of a fit started from W₂ alone."""
    task = make_shuffled_task(c=3, d=8, views=1, seed=0, per=[8, 2, 2], dtype=D64)
    lp = methods.create("linear-probe", Cs=(10.0, 0.1, 1.0), max_iter=5, dtype="float64")
    lp.fit(task)
    x, y = _support(task)
    fits = [_plain_lbfgs(x, y, 3, 0.1, max_iter=5)]
    fits.append(_plain_lbfgs(x, y, 3, 1.0, init=fits[0], max_iter=5))
    start = (2 * fits[1][0] - fits[0][0], 2 * fits[1][1] - fits[0][1])
    fits.append(_plain_lbfgs(x, y, 3, 10.0, init=start, max_iter=5))
    xv, yv = l2_normalize(task.val.features), task.val.labels
    acc = [100.0 * float(((xv @ w.T + b).argmax(1) == yv).double().mean()) for w, b in fits]
    assert acc[2] > max(acc[:2])
    assert lp.C_ == 10.0
    assert lp.val_accuracy_ == pytest.approx(acc[2])
    _assert_same((lp.coef_, lp.intercept_), fits[2])
    from_last = _plain_lbfgs(x, y, 3, 10.0, init=fits[1], max_iter=5)
    assert not torch.allclose(from_last[0], fits[2][0], atol=1e-3)
