"""Bad hyper-parameters raise ValueError with the whole message a user reads, and the edges
of every range are accepted."""

import re

import pytest

from fewclip import methods


@pytest.mark.usefixtures("one_thread")
def test_bad_hyper_parameters(task):
    cases = [
        ("ape", {"channels": 17}, "channels: expected an integer in \\[1, 16\\]"),
        ("ape", {"channel_fraction": 0.0}, "channel_fraction: expected a value in"),
        ("ape", {"search_step": (10, 5)}, "search_scale and search_step: expected 3 entries"),
        ("ape", {"criterion_weights": (1.0,)}, "weights: expected two entries"),
        ("ape-t", {"epochs": -1}, "epochs: expected a non-negative integer"),
        ("ape-t", {"batch_size": 0}, "batch_size: expected a positive integer"),
        ("tip-x", {"temperature": 0.0}, "temperature: expected a positive value"),
        ("tip-x", {"search_scale": (1.0, 2.0)}, "expected three entries each"),
        ("tip-x", {"search_step": (0, 2, 2)}, "search_step: expected positive integers"),
        ("taskres", {"epochs": -2}, "epochs: expected a non-negative integer"),
        ("taskres", {"base_norm": 0.0}, "base_norm: expected a positive value"),
        ("cross-modal-lp", {"text_ratio": 1.0}, "text_ratio: expected a value in"),
        ("cross-modal-lp", {"wiseft_ratio": 2.0}, "wiseft_ratio: expected a value in"),
        ("cross-modal-lp", {"batch_size": 1}, "batch_size: expected at least 2"),
        ("cross-modal-lp", {"eval_every": 0}, "eval_every: expected a positive integer"),
    ]
    for name, params, message in cases:
        with pytest.raises(ValueError, match=message):
            methods.create(name, **params).fit(task)


# The whole message a user reads, for each check not covered above.
EXACT = [
    ("taskres", {"alpha": float("inf")}, "alpha: expected a finite residual scale, found inf"),
    ("cross-modal-lp", {"iters": -1}, "iters: expected a non-negative integer, found -1"),
    ("cross-modal-lp", {"eval_every": 0}, "eval_every: expected a positive integer, found 0"),
    (
        "cross-modal-lp",
        {"search": True, "search_lr": ()},
        "search_lr, search_weight_decay and search_batch_size: expected at least one value "
        "each with search=True, found (), (0.0, 0.01, 0.0001) and (8, 32)",
    ),
    (
        "cross-modal-lp",
        {"search": True, "search_batch_size": (1, 8)},
        "batch_size: expected at least 2 (images and texts), found [32, 1, 8]",
    ),
    ("cross-modal-lp", {"text_ratio": -0.1}, "text_ratio: expected a value in [0, 1), found -0.1"),
    ("clip-adapter", {"reduction": 0}, "reduction: expected a positive integer, found 0"),
    ("clip-adapter", {"ratio": 1.5}, "ratio: expected a value in [0, 1], found 1.5"),
    (
        "clip-adapter",
        {"text_ratio": -0.5, "branch": "both"},
        "text_ratio: expected a value in [0, 1], found -0.5",
    ),
    ("gda", {"alphas": ()}, "alphas: expected at least one value to search, found none"),
    (
        "gda",
        {"covariance": "bad"},
        "covariance: expected one of ('ks', 'ledoit-wolf', 'oas', 'empirical'), found 'bad'",
    ),
    ("proker", {"lam": 0.0}, "lam: expected a positive value, found 0.0"),
    ("proker", {"beta": -1.0}, "beta: expected a positive value, found -1.0"),
    ("proker", {"n_landmarks": 0}, "n_landmarks: expected a positive integer, found 0"),
    (
        "tip-x",
        {"search_scale": (1.0, 2.0)},
        "search_scale and search_step: expected three entries each (beta, alpha, gamma), found "
        "(1.0, 2.0) and (50, 20, 50)",
    ),
    (
        "tip-x",
        {"search_step": (0, 2, 2)},
        "search_step: expected positive integers, found (0, 2, 2)",
    ),
    ("ape", {"search_step": (0, 2, 2)}, "search_step: expected positive integers, found (0, 2, 2)"),
    (
        "ape-t",
        {"search_step": (10, 5, 3)},
        "search_scale and search_step: expected 2 entries each, found (7.0, 7.0) and (10, 5, 3)",
    ),
    ("ape", {"channel_fraction": 1.5}, "channel_fraction: expected a value in (0, 1], found 1.5"),
]


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize(("name", "params", "message"), EXACT, ids=lambda v: str(v)[:40])
def test_bad_hyper_parameter_messages_word_for_word(task, name, params, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        methods.create(name, **params).fit(task)


# The edge of every range above is inside it: these fit.
EDGES = [
    ("cross-modal-lp", {"iters": 0}),
    ("cross-modal-lp", {"iters": 4, "eval_every": 1, "batch_size": 2, "text_ratio": 0.0}),
    ("cross-modal-lp", {"iters": 4, "eval_every": 2, "wiseft_ratio": 1.0}),
    ("clip-adapter", {"epochs": 1, "reduction": 1, "ratio": 1.0}),
    ("clip-adapter", {"epochs": 1, "ratio": 0.0, "text_ratio": 1.0, "branch": "both"}),
    ("proker", {"betas": (1.0,), "lams": (0.1,), "solver": "nystrom", "n_landmarks": 1}),
    ("ape", {"channel_fraction": 1.0, "search_step": (1, 1, 1)}),
    ("tip-x", {"search_step": (1, 1, 1)}),
    ("taskres", {"epochs": 0, "alpha": -1.0}),
    ("gda", {"alphas": (0.5,), "covariance": "empirical"}),
]


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize(("name", "params"), EDGES, ids=lambda v: str(v)[:40])
def test_the_edges_of_the_ranges_are_accepted(task, name, params):
    m = methods.create(name, **params).fit(task)
    assert m.predict(task.val.features).shape == (task.val.n,)
