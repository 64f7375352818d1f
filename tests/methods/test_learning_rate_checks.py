"""Every learning rate a trained method takes is checked when ``fit`` starts: a negative,
infinite or NaN one is refused with the parameter's name (before, only torch's optimiser
refused a negative *first* rate, so several schedules trained uphill)."""

import math

import pytest
from tests.methods._helpers import make_clustered_task

from fewclip import methods
from fewclip.errors import InvalidValueError
from fewclip.methods.lp_pp import largest_eigenvalue

#: (method, parameter) for every scalar learning rate of a trained method
RATES = [
    ("tip-adapter-f", "lr"),
    ("ape-t", "lr"),
    ("clip-adapter", "lr"),
    ("clip-adapter", "warmup_lr"),
    ("zs-lp", "lr"),
    ("zs-lp", "warmup_lr"),
    ("clap", "warmup_lr"),
    ("taskres", "lr"),
    ("taskres", "warmup_lr"),
    ("cross-modal-lp", "lr"),
    ("cross-modal-lp", "warmup_lr"),
]


@pytest.mark.parametrize(("name", "param"), RATES)
@pytest.mark.parametrize("bad", [-0.01, math.inf, math.nan])
def test_a_bad_learning_rate_is_refused_by_name(name, param, bad):
    model = methods.create(name, **{**methods.get(name).quick_params, param: bad})
    with pytest.raises(InvalidValueError) as e:
        model.fit(make_clustered_task())
    assert str(e.value) == f"{param}: expected a non-negative learning rate, found {bad!r}"


@pytest.mark.parametrize(("name", "param"), RATES)
def test_a_zero_learning_rate_is_accepted(name, param):
    methods.create(name, **{**methods.get(name).quick_params, param: 0.0}).fit(
        make_clustered_task()
    )


def test_search_learning_rates_are_checked_only_when_searching():
    task = make_clustered_task()
    quick = dict(methods.get("cross-modal-lp").quick_params)
    bad = methods.create("cross-modal-lp", **{**quick, "search": True}, search_lr=(1e-3, -1e-4))
    with pytest.raises(InvalidValueError) as e:
        bad.fit(task)
    assert str(e.value) == (
        "search_lr: expected non-negative learning rates, found [0.001, -0.0001]"
    )
    infinite = methods.create("cross-modal-lp", **{**quick, "search": True}, search_lr=(math.inf,))
    with pytest.raises(InvalidValueError, match=r"found \[inf\]"):
        infinite.fit(task)
    methods.create("cross-modal-lp", **{**quick, "search": True}, search_lr=(0.0,)).fit(task)
    # without a search the grid is never used, so it is not checked either
    methods.create("cross-modal-lp", **{**quick, "search": False}, search_lr=(-1.0,)).fit(task)


def test_largest_eigenvalue_with_tol_one_returns_the_first_small_estimate():
    """tol = 1 accepts the first Rayleigh quotient (its change from 0 is 100 %), also when it
    is small: for λ below 0.5 it is not λ_max yet, and a second step would change it."""
    import torch

    x = torch.diag(torch.tensor([0.3, 0.1], dtype=torch.float64).sqrt())
    first = largest_eigenvalue(x, tol=1.0, max_iter=1)
    assert largest_eigenvalue(x, tol=1.0) == first
    assert first < 0.3 - 1e-6  # not yet the limit, so more steps would have moved it
