import pytest
import torch

from fewclip.task import FeatureSet, Task


def make_task(c=5, shots=4, d=16, views=3, seed=0, val=True, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(c, d, generator=g, dtype=dtype)
    labels = torch.arange(c).repeat_interleave(shots)
    feats = 3 * (means[labels] + 0.7 * torch.randn(len(labels), d, generator=g, dtype=dtype))
    bank = feats + 0.2 * torch.randn(views, len(labels), d, generator=g, dtype=dtype)
    vy = torch.arange(c).repeat_interleave(2)
    vx = 3 * (means[vy] + 0.7 * torch.randn(len(vy), d, generator=g, dtype=dtype))
    text = means + 1.0 * torch.randn(c, d, generator=g, dtype=dtype)
    text = text / text.norm(dim=1, keepdim=True)
    return Task(
        [f"class {i}" for i in range(c)],
        text,
        FeatureSet(feats, labels, bank),
        FeatureSet(vx, vy) if val else None,
    )


@pytest.fixture
def task():
    return make_task()


@pytest.fixture
def queries():
    return torch.randn(9, 16, generator=torch.Generator().manual_seed(5)) * 3


# Faster settings for the registry-wide tests (test_registry_and_io.py) of methods whose paper
# defaults train for thousands of steps; merged into that module's FAST table.
FAST_EXTRA = {
    "cross-modal-lp": {"iters": 200, "eval_every": 50},
    "taskres": {"epochs": 20},
    "ape": {"search_step": (10, 5, 3)},
    "ape-t": {"epochs": 3, "search_step": (10, 5)},
    "tip-x": {"search_step": (10, 5, 4)},
}


@pytest.fixture(autouse=True)
def _fast_registry_params(request):
    fast = getattr(request.module, "FAST", None)
    if isinstance(fast, dict):
        for name, params in FAST_EXTRA.items():
            fast.setdefault(name, params)
