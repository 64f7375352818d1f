"""Tiny synthetic worlds for the benchmark-runner tests (seconds, not minutes)."""

from __future__ import annotations

import pytest

from fewclip.bench import BenchConfig
from fewclip.bench.synthetic import synthetic_prepare
from fewclip.testing.synthetic import DatasetShape

SHAPES = {
    "alpha": DatasetShape("alpha", 5, 200, 50, 60, dim=24),
    "beta": DatasetShape("beta", 4, 120, 0, 40, dim=24),  # no val split (like ImageNet)
}

# A small Tip-Adapter grid keeps each cell in milliseconds.
FAST = {"tip-adapter": {"search_step": [10, 5]}}

# The four prompt learners, and settings that keep each of their cells short (toy text tower).
PROMPT_LEARNERS = ("coop", "cocoop", "kgcoop", "prograd")
PROMPT_QUICK = {
    "coop": {"epochs": 2, "n_ctx": 4},
    "cocoop": {"epochs": 1, "batch_size": 4},
    "kgcoop": {"epochs": 2, "batch_size": 8},
    "prograd": {"epochs": 2, "n_ctx": 6},  # more vectors than the phrase has words
}


def tiny_config(**kw):
    base = {
        "methods": ("zero-shot", "tip-adapter"),
        "datasets": ("alpha", "beta"),
        "shots": (1, 2),
        "seeds": (1, 2),
        "backbones": ("toy",),
        "params": FAST,
    }
    base.update(kw)
    return BenchConfig(**base)


class CountingPrepare:
    """``synthetic_prepare`` that counts its calls per (dataset, backbone)."""

    def __init__(self, **kw):
        self._inner = synthetic_prepare(shapes=SHAPES, calibrate=False, n_views=3, **kw)
        self.calls: list[tuple[str, str]] = []

    def __call__(self, dataset, backbone):
        self.calls.append((dataset, backbone))
        return self._inner(dataset, backbone)


@pytest.fixture
def prepare():
    return CountingPrepare()


@pytest.fixture
def fit_counter(monkeypatch):
    """Counts ``Method.fit`` calls as (method, dataset, shots, seed); set ``.fail_at`` to raise
    KeyboardInterrupt at that call (a simulated Ctrl-C / kill mid-run)."""
    from fewclip.methods.base import Method

    original = Method.fit

    class Counter:
        calls: list[tuple[str, str, int, int]] = []  # noqa: RUF012
        fail_at: int | None = None

    counter = Counter()
    counter.calls = []

    def fit(self, task):
        m = task.meta
        counter.calls.append((self.name, m.get("dataset"), m.get("shots"), m.get("seed")))
        if counter.fail_at is not None and len(counter.calls) == counter.fail_at:
            raise KeyboardInterrupt("simulated interrupt")
        return original(self, task)

    monkeypatch.setattr(Method, "fit", fit)
    return counter
