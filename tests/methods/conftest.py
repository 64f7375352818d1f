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


# -- shared by the per-method files (test_gda.py, test_ape.py, ...) ------------------------------
# Each of those files builds its own ``task64`` with a builder from tests/methods/_helpers.py:
# GDA, ProKeR, LP++ and CLAP were written against make_clustered_task, APE, TIP-X, TaskRes and the
# tests across methods against make_shuffled_task.


@pytest.fixture
def queries64():
    return torch.randn(7, 8, generator=torch.Generator().manual_seed(9), dtype=torch.float64) * 3


@pytest.fixture
def one_thread():
    """One intra-op thread, for tests that run thousands of tiny ops, where a second thread only
    adds synchronisation (and stalls badly on a shared machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
