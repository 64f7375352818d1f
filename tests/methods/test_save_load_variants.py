"""Saved and loaded methods keep logits and state: non-default variants, after search/training."""

import pytest
import torch
from tests.methods._helpers import TASKRES_APE_TIPX_CMLP
from tests.methods._helpers import make_shuffled_task as make_task

from fewclip import methods


@pytest.fixture
def task64():
    return make_task(c=4, shots=3, d=8, views=3, seed=2, dtype=torch.float64)


@pytest.mark.parametrize(
    ("name", "kw"),
    [
        ("gda", {"covariance": "ledoit-wolf"}),
        ("proker", {"solver": "nystrom", "n_landmarks": 7, "rows": "views"}),
        ("proker", {"solver": "cg", "beta": 2.0, "lam": 0.1}),
        ("lp++", {"epochs": 15, "use_views": True}),
        ("clap", {"epochs": 3}),
    ],
)
def test_save_load_variants(task, queries, tmp_path, name, kw):
    m = methods.create(name, **kw).fit(task)
    m.save(tmp_path / "m")
    loaded = methods.load(tmp_path / "m")
    assert torch.equal(loaded.logits(queries), m.logits(queries))
    assert loaded.get_params() == m.get_params()
    for attr in type(m)._state_values:
        assert getattr(loaded, attr) == getattr(m, attr)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", TASKRES_APE_TIPX_CMLP)
def test_save_load_after_search_and_training(name, task64, queries64, tmp_path):
    m = methods.create(name, dtype="float64", **methods.get(name).quick_params).fit(task64)
    m.save(tmp_path / name)
    loaded = methods.load(tmp_path / name)
    assert torch.equal(loaded.logits(queries64), m.logits(queries64))
    values = type(m)._state_values  # e.g. alpha_, beta_, val_accuracy_, best_epoch_, lr_
    assert values, f"{name} saves no fitted values"
    for attr in values:
        assert getattr(loaded, attr) == getattr(m, attr)
