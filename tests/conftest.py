"""Shared test setup: never touch the network, keep torch small and deterministic."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# `datasets` writes its Arrow cache when it reads a local folder: keep that out of $HOME.
if "HF_DATASETS_CACHE" not in os.environ:
    _hf_cache = tempfile.mkdtemp(prefix="fewclip-test-hf-datasets-")
    os.environ["HF_DATASETS_CACHE"] = _hf_cache
    atexit.register(shutil.rmtree, _hf_cache, ignore_errors=True)

# Under pytest-xdist the workers share the cores: the processes the tests start (the installed
# `fewclip` command, bench workers, docs examples) take one torch thread each too. Two workers'
# subprocesses with two threads each on two cores spin-wait on each other (measured: the CLI
# tests took 1.5x as long).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

from typing import Any

import pytest
import torch
from tests.faults._log import FAULTS

# one thread per pytest-xdist worker (the workers share the cores), two without xdist
torch.set_num_threads(
    1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads())
)


# -- the longest tests first ---------------------------------------------------------------------

# Tests of 10 s or more on the 2-core machine (`pytest --durations=0`). Collected in their own
# place, some come last (test_calibrated_presets.py sorts after every folder) and then run
# alone while the other pytest-xdist worker has nothing left to take; started first, the
# short tests fill in around them, in the order listed; the order within each group is kept.
_LONG_FIRST = (
    "tests/test_calibrated_presets.py",  # ImageNet: a 50,000 x 16,000 cache product, 31 s
    "tests/cli/test_commands.py::test_every_command_as_a_console_process",  # 30 s
    "tests/scale/",  # Ray: 10-24 s a test
    "tests/cli/test_bad_images.py",  # predict over bad files: 20 s
    "tests/docs/test_code_blocks.py::test_shell_blocks",  # own-images.md: 18 s
    "tests/cli/test_readme_walkthrough.py",
    "tests/cli/test_export_cmd.py",
    "tests/cli/test_serve.py",
)


def _start_rank(item: pytest.Item) -> int:
    ranks = (i for i, prefix in enumerate(_LONG_FIRST) if item.nodeid.startswith(prefix))
    return next(ranks, len(_LONG_FIRST))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_start_rank)


# -- the fault-injection table (tests/faults), merged across pytest-xdist workers -----------


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: hand its log to the controller
        workeroutput["fewclip_faults"] = FAULTS.to_json()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    FAULTS.merge(getattr(node, "workeroutput", {}).get("fewclip_faults", {}))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FAULTS.counts and not hasattr(terminalreporter.config, "workeroutput"):
        terminalreporter.write_sep("=", "fault injection")
        terminalreporter.write_line(FAULTS.table())
