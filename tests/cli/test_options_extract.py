"""`fewclip extract` options through the installed command: --splits, --view-seed,
--num-workers, --device and --precision."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from fewclip.features import FeatureStore

from .conftest import TINY_BACKBONE, run_fewclip


def _extract(data: Path, store: Path, *extra: str) -> dict[str, Any]:
    res = run_fewclip(
        "extract", "-d", data, "-b", TINY_BACKBONE, "--views", "1", *extra, "--json", "-q",
        store=store,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    return json.loads(res.stdout)


def test_splits_view_seed_num_workers_device_precision(opt_data: Path, tmp_path: Path) -> None:
    s1, s2 = tmp_path / "s1", tmp_path / "s2"
    a = _extract(opt_data, s1, "--splits", "train")
    # --splits train: only the train split is extracted, not val or test
    assert [s["split"] for s in a["splits"]] == ["train"]
    assert a["splits"][0]["encoded"] > 0
    assert {e.record["split"].rsplit("/", 1)[-1] for e in FeatureStore(s1).entries()} == {"train"}

    # a second store: one decoding worker, explicit cpu and fp32, another seed for the views
    b = _extract(
        opt_data, s2, "--splits", "train", "--view-seed", "5", "--num-workers", "1",
        "--device", "cpu", "--precision", "fp32",
    )  # fmt: skip
    ka, kb = a["splits"][0]["keys"], b["splits"][0]["keys"]
    assert set(ka) == set(kb) == {"plain", "view0"}
    fa, fb = FeatureStore(s1), FeatureStore(s2)
    # --num-workers 1, --device cpu, --precision fp32: the same plain features, same key
    # (the defaults on a CPU are the main process, cpu and amp = float32)
    assert ka["plain"] == kb["plain"]
    assert torch.equal(fa.load(ka["plain"], mmap=False), fb.load(kb["plain"], mmap=False))
    assert fb.info(kb["plain"]).record["precision"] == "fp32"
    # --view-seed 5: other augmented views than seed 0, recorded in the entry
    assert ka["view0"] != kb["view0"]
    assert fb.info(kb["view0"]).record["view"]["seed"] == 5
    assert fa.info(ka["view0"]).record["view"]["seed"] == 0
    assert not torch.equal(fa.load(ka["view0"], mmap=False), fb.load(kb["view0"], mmap=False))
