"""Bad hyper-parameters of APE(-T), TIP-X, TaskRes and the cross-modal probe raise ValueError."""

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
