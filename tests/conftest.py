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

import torch

torch.set_num_threads(min(2, torch.get_num_threads()))
