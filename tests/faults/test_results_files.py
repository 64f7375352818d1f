"""Faults in a benchmark results file: `results.jsonl` damaged every way between two runs.
The next run must keep every sound row, move the damaged bytes aside (``NAME.torn``), run the
lost cells again and leave valid JSONL whose rows equal a clean run's."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

from fewclip.bench import BenchConfig, run_bench
from fewclip.bench.results import parse_row
from fewclip.bench.synthetic import synthetic_prepare
from fewclip.testing.synthetic import DatasetShape

from .conftest import bitflip, delete, empty, garbage, truncate

SHAPES = {"alpha": DatasetShape("alpha", 4, 80, 20, 30, dim=16)}
CONFIG = BenchConfig(
    methods=("zero-shot", "tip-adapter"),
    datasets=("alpha",),
    shots=(1, 2),
    seeds=(1, 2),
    backbones=("toy",),
    params={"tip-adapter": {"search_step": [5, 3]}},
)


def _prepare():
    return synthetic_prepare(shapes=SHAPES, calibrate=False, n_views=2)


def digit(p: Path) -> None:
    """A digit of an accuracy changed: still valid JSON, a wrong number (only the checksum
    can tell)."""
    lines = p.read_text().splitlines()
    row = json.loads(lines[2])
    lines[2] = lines[2].replace(f'"accuracy": {row["accuracy"]}', '"accuracy": 99.0')
    p.write_text("\n".join(lines) + "\n")


FAULTS: dict[str, Callable[[Path], None]] = {
    f.__name__: f for f in (bitflip, digit, truncate, garbage, empty, delete)
}


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float]]:
    out = tmp_path_factory.mktemp("clean") / "results.jsonl"
    rows = run_bench(CONFIG, _prepare(), out, quiet=True)
    return out, {r["hash"]: r["accuracy"] for r in rows}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_damaged_results_file_is_repaired_by_the_next_run(
    clean: tuple[Path, dict[str, float]], tmp_path: Path, fault: str, fault_record
) -> None:
    src, want = clean
    out = tmp_path / "results.jsonl"
    out.write_bytes(src.read_bytes())
    FAULTS[fault](out)
    damaged = out.read_bytes() if out.exists() else b""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rows = run_bench(CONFIG, _prepare(), out, quiet=True)
    lines = out.read_bytes().splitlines()
    parsed = [parse_row(line)[0] for line in lines]
    valid = all(r is not None for r in parsed)
    got = {r["hash"]: r["accuracy"] for r in parsed if r is not None}
    side = tmp_path / "results.jsonl.torn"
    kept_aside = side.read_bytes() if side.exists() else b""
    # every damaged byte is either still in a sound row or kept in the side file
    sound = {line for line in damaged.split(b"\n") if line and parse_row(line)[0] is not None}
    lost = sum(1 for line in sound if line not in lines)
    repaired = valid and got == want and {r["hash"]: r["accuracy"] for r in rows} == want
    fault_record.add("results.jsonl", "repaired" if repaired else "silent", lost=lost)
    assert valid
    assert got == want
    assert lost == 0
    if fault in ("bitflip", "digit", "truncate", "garbage"):
        assert kept_aside  # the damaged bytes are kept for inspection


def test_bench_folder_with_damaged_reports_and_marker_is_reused(tmp_path: Path, fault_record):
    """`fewclip bench -o OUT` again after its marker and reports were damaged (garbage marker,
    garbage results.md, summary deleted): exit 0, one note about the marker, the same table."""
    from fewclip.testing.cli import run_fewclip
    from fewclip.testing.images import make_shapes_dataset

    photos = make_shapes_dataset(
        tmp_path / "photos",
        classes=("red_circle", "blue_square"),
        per_class={"train": 4, "test": 2},
        size=24,
    )
    cfg = tmp_path / "grid.yaml"
    cfg.write_text(
        f"datasets: [{photos}]\nmethods: [zero-shot]\nshots: [1]\nseeds: [1]\n"
        "backbones: [fewclip-tiny-vit]\nviews: 1\n"
    )
    out, store = tmp_path / "out", tmp_path / "store"
    assert run_fewclip("bench", cfg, "-o", out, "-q", store=store).returncode == 0
    table = (out / "results.md").read_text()
    garbage(out / ".fewclip-output.json")
    garbage(out / "results.md")
    delete(out / "results.summary.json")
    res = run_fewclip("bench", cfg, "-o", out, "-q", store=store)
    notes = [ln for ln in res.stderr.splitlines() if ".fewclip-output.json: damaged" in ln]
    ok = res.returncode == 0 and (out / "results.md").read_text() == table
    fault_record.add("bench output folder", "repaired" if ok else "traceback")
    assert res.returncode == 0, res.stderr
    assert len(notes) == 1
    assert (out / "results.md").read_text() == table
    assert (out / "results.summary.json").is_file()
    assert json.loads((out / ".fewclip-output.json").read_text())["kind"] == "bench"
