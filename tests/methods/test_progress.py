"""Trained methods show a progress bar named after the method when asked, and nothing when
not: what a user watching a long fit sees on stderr."""

from __future__ import annotations

from typing import Any

import pytest

from fewclip import methods

# (method, extra parameters, the bar's name, its length): one case per training loop
CASES: list[tuple[str, dict[str, Any], str, int]] = [
    ("tip-adapter-f", {"epochs": 2}, "tip-adapter-f", 2),
    ("ape-t", {"epochs": 2}, "ape-t", 2),
    ("clap", {"epochs": 2}, "clap", 2),
    ("zs-lp", {"epochs": 2}, "zs-lp", 2),
    ("clip-adapter", {"epochs": 2}, "clip-adapter", 2),
    ("clip-adapter", {"epochs": 2, "branch": "text"}, "clip-adapter", 2),
    ("cross-modal-lp", {"iters": 6, "eval_every": 3}, "cross-modal-lp", 6),
    ("cross-modal-lp", {"iters": 40, "eval_every": 20}, "cross-modal-lp", 40),  # 2 blocks
    ("lp++", {"epochs": 3}, "lp++", 3),
    ("taskres", {"epochs": 2}, "taskres", 2),
    ("coop", {"epochs": 2, "n_ctx": 2}, "coop", 2),
    ("kgcoop", {"epochs": 2}, "kgcoop", 2),
    ("cocoop", {"epochs": 2, "batch_size": 8}, "cocoop", 2),
    ("prograd", {"epochs": 2, "n_ctx": 4}, "prograd", 2),
]


def test_every_method_with_a_progress_switch_is_covered() -> None:
    with_switch = {n for n in methods.available() if "progress" in methods.create(n).get_params()}
    assert with_switch == {name for name, *_ in CASES}


@pytest.mark.parametrize(("name", "params", "bar", "length"), CASES, ids=lambda v: str(v))
def test_progress_bar_only_when_asked(
    task: Any, capfd: pytest.CaptureFixture[str], name: str, params: dict, bar: str, length: int
) -> None:
    methods.create(name, **params).fit(task)
    assert capfd.readouterr().err == ""
    methods.create(name, progress=True, **params).fit(task)
    err = capfd.readouterr().err
    assert f"{bar}: 100%" in err
    assert f" {length}/{length} " in err


@pytest.mark.parametrize("name", ["clip-adapter", "tip-adapter-f"])
def test_seeds_fitted_together_show_one_bar_only_when_asked(
    task: Any, capfd: pytest.CaptureFixture[str], name: str
) -> None:
    """``fit_seeds`` of copies that batch: one bar for the batch, named after the method."""
    for progress in (False, True):
        copies = [methods.create(name, epochs=2, seed=s, progress=progress) for s in (1, 2)]
        assert methods.fit_seeds(copies, [task, task], force=True) == 2
        err = capfd.readouterr().err
        if progress:
            assert err.count(f"{name}:   0%") == 1, err  # one bar starts
            assert f"{name}: 100%" in err
            assert " 2/2 " in err
        else:
            assert err == ""
