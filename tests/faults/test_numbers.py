"""Extreme numbers for every method: zero rows, rows scaled far up or down, in float32 and
float64. Every method scores the direction of a query, so a scaled row must give finite scores
and the prediction of the same row at unit norm; a zero row must give finite scores."""

from __future__ import annotations

import pytest
import torch

from fewclip import methods
from fewclip.testing.conformance import make_task

FAULTS = {
    "zero row": (torch.float32, 0.0),
    "float32 × 1e-30": (torch.float32, 1e-30),
    "float32 × 1e30": (torch.float32, 1e30),
    "float32 × 1e-38": (torch.float32, 1e-38),
    "float64 × 1e-300": (torch.float64, 1e-300),
    "float64 × 1e300": (torch.float64, 1e300),
}


@pytest.fixture(scope="module")
def fitted() -> dict[str, methods.Method]:
    task = make_task(n_classes=6, shots=4, dim=24, views=2, seed=11)
    out = {}
    for name in methods.available():
        cls = methods.get(name)
        out[name] = cls(**cls.quick_params).fit(task)
    return out


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("name", methods.available())
def test_extreme_rows_give_finite_scores_and_the_unit_row_prediction(
    fitted: dict[str, methods.Method], name: str, fault: str, fault_record
) -> None:
    dtype, scale = FAULTS[fault]
    m = fitted[name]
    x = torch.randn(12, 24, generator=torch.Generator().manual_seed(12), dtype=dtype)
    unit = m.predict(x / x.norm(dim=1, keepdim=True))
    try:
        logits = m.logits(x * scale)
    except Exception as e:
        fault_record.add("method scores", "traceback")
        raise AssertionError(f"{name}, {fault}: {type(e).__name__}: {e}") from e
    finite = bool(torch.isfinite(logits).all())
    same = scale == 0.0 or torch.equal(logits.argmax(1), unit)
    fault_record.add("method scores", "correct" if finite and same else "silent")
    assert finite, f"{name}, {fault}: non-finite scores"
    assert same, f"{name}, {fault}: other predictions than at unit norm"
