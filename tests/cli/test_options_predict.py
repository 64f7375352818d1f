"""`fewclip predict` options through the installed command: --device, --precision and
--batch-size (with --top-k, --format and --quiet checked on the way)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
from pathlib import Path

import pytest

from .conftest import run_fewclip

Fitted = tuple[Path, Path, subprocess.CompletedProcess[str]]


def _images(data: Path) -> list[Path]:
    return sorted((data / "test").rglob("*.png"))[::2]  # 6 images, 2 of each class


def test_csv_top_k_batch_size_device_precision_quiet(
    opt_data: Path, opt_adapter: Fitted, tmp_path: Path
) -> None:
    adapter = opt_adapter[0]
    images = _images(opt_data)
    res = run_fewclip(
        "predict", adapter, *images, "--top-k", "2", "--format", "csv", "--batch-size", "1",
        "--device", "cpu", "--precision", "fp32", "--quiet", store=tmp_path / "store",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""  # --quiet: no progress bar, no note; the result alone
    assert res.stdout.splitlines()[0] == "image,rank,label,class,prob,error"
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert [r["image"] for r in rows] == [str(p) for p in images for _ in range(2)]
    assert [r["rank"] for r in rows] == ["1", "2"] * len(images)  # --top-k 2: 2 per image
    assert all(r["error"] == "" and 0.0 <= float(r["prob"]) <= 1.0 for r in rows)

    # the same images in one batch of 64, default precision (fp32 on the CPU), as JSON
    res = run_fewclip(
        "predict", adapter, *images, "-k", "2", "-f", "json", store=tmp_path / "store"
    )
    assert res.returncode == 0, res.stderr
    batched = json.loads(res.stdout)
    assert [p["image"] for p in batched] == [str(p) for p in images]
    flat = [t for p in batched for t in p["top"]]
    assert [t["class"] for t in flat] == [r["class"] for r in rows]  # --batch-size: same result
    for t, r in zip(flat, rows, strict=True):
        assert t["prob"] == pytest.approx(float(r["prob"]), abs=2e-6)
