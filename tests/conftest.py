"""Shared test setup: never touch the network, keep torch small and deterministic."""

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# `datasets` writes its Arrow cache when it reads a local folder: keep that out of $HOME.
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="fewclip-test-hf-datasets-"))

import torch

torch.set_num_threads(min(2, torch.get_num_threads()))
