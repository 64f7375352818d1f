import pytest
import torch
from tests.methods._helpers import make_clustered_task


@pytest.fixture
def task():
    return make_clustered_task()


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
