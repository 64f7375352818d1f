"""Benchmark grids on Ray actors: the local rows, one writer, a killed worker's cell run again
once, a second driver running only what is missing."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading

import pytest
from tests.bench.conftest import CountingPrepare, tiny_config

from fewclip.bench import read_rows, run_bench
from fewclip.executors import LocalExecutor, RayExecutor
from fewclip.testing.faults import HeldSource, wait_for_holder

GRID = {"methods": ("zero-shot", "tip-adapter", "linear-probe"), "seeds": (1, 2)}


def _result(row):
    """What a cell computed, not how or how long."""
    keep = ("hash", "accuracy", "n_test", "n_support", "n_val", "params", "fitted")
    return {k: row[k] for k in keep}


@pytest.fixture(scope="module")
def local_rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "r.jsonl"
    return run_bench(tiny_config(**GRID), CountingPrepare(), out, quiet=True)


def test_a_grid_on_ray_gives_the_local_rows(ray_local, tmp_path, local_rows):
    cfg = tiny_config(**GRID)
    prepare = CountingPrepare()
    out = tmp_path / "r.jsonl"
    rows = run_bench(cfg, prepare, out, quiet=True, executor=RayExecutor(workers=2))
    assert [r["hash"] for r in rows] == [c.hash for c in cfg.cells()]
    assert [_result(r) for r in rows] == [_result(r) for r in local_rows]
    assert {(r["executor"], r["jobs"], r["threads"]) for r in rows} == {("ray", 2, 1)}
    assert {r["executor"] for r in local_rows} == {"local"}
    assert prepare.calls == [("alpha", "toy"), ("beta", "toy")]  # on the driver, once each
    on_disk = read_rows(out)
    assert sorted(r["hash"] for r in on_disk) == sorted(r["hash"] for r in rows)


class _HeldPrepare(CountingPrepare):
    """The alpha dataset's source holds the first worker that reads features."""

    def __init__(self, gate):
        super().__init__()
        self.gate = gate

    def __call__(self, dataset, backbone):
        prepared = super().__call__(dataset, backbone)
        if dataset != "alpha":
            return prepared
        return dataclasses.replace(prepared, source=HeldSource(prepared.source, self.gate))


def test_a_killed_worker_s_cell_runs_again_and_gives_one_row(ray_local, tmp_path, local_rows):
    cfg = tiny_config(**GRID)
    gate = tmp_path / "gate"
    out = tmp_path / "r.jsonl"
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["rows"] = run_bench(
                cfg, _HeldPrepare(gate), out, quiet=True, executor=RayExecutor(workers=2)
            )
        except BaseException as e:  # reported below
            result["error"] = e

    driver = threading.Thread(target=run)
    driver.start()
    pid = wait_for_holder(gate)
    assert pid != os.getpid()
    os.kill(pid, signal.SIGKILL)
    driver.join(timeout=300)
    assert not driver.is_alive()
    assert "error" not in result, result.get("error")
    on_disk = read_rows(out)
    assert len(on_disk) == len(local_rows)  # nothing twice, nothing lost
    assert sorted(map(_result, on_disk), key=str) == sorted(map(_result, local_rows), key=str)


def test_a_second_driver_runs_only_the_missing_cells(ray_local, tmp_path, local_rows):
    out = tmp_path / "r.jsonl"
    half = run_bench(
        tiny_config(**GRID, shots=(2,)), CountingPrepare(), out, quiet=True,
        executor=LocalExecutor(2),
    )  # fmt: skip
    before = out.read_bytes()
    cfg = tiny_config(**GRID)
    rows = run_bench(cfg, CountingPrepare(), out, quiet=True, executor=RayExecutor(workers=2))
    after = out.read_bytes()
    assert after.startswith(before)  # the first driver's rows stay as they were
    added = read_rows(out)[len(half) :]
    assert sorted(r["hash"] for r in added) == sorted(
        c.hash for c in cfg.cells() if c.shots == 1
    )  # exactly the missing cells, once each
    assert [_result(r) for r in rows] == [_result(r) for r in local_rows]


def test_seed_batches_on_ray_give_the_rows_of_cells_run_alone(ray_local, tmp_path):
    """CLIP-Adapter's seeds fitted as one batched model on an actor: each row is the row of
    its cell run alone, locally, but for the record of the batching and the timings."""
    cfg = tiny_config(
        methods=("clip-adapter",), seeds=(1, 2, 3), params={"clip-adapter": {"epochs": 2}}
    )
    rows = run_bench(
        cfg, CountingPrepare(), tmp_path / "r.jsonl", quiet=True,
        executor=RayExecutor(workers=2), batch_seeds="always",
    )  # fmt: skip
    alone = run_bench(cfg, CountingPrepare(), tmp_path / "a.jsonl", quiet=True, batch_seeds="never")
    assert [_result(r) for r in rows] == [_result(r) for r in alone]
    assert {r["seeds_batched"] for r in rows} == {3}


def test_jobs_and_a_ray_executor_are_not_given_together(tmp_path):
    with pytest.raises(ValueError, match="jobs=2: the Ray executor runs cells on its workers"):
        run_bench(
            tiny_config(), CountingPrepare(), tmp_path / "r.jsonl", jobs=2,
            executor=RayExecutor(workers=2),
        )  # fmt: skip


def test_a_generalisation_grid_on_ray_gives_the_local_rows(ray_local, tmp_path):
    """Base-to-new and domain-generalisation cells on Ray actors: the targets travel with the
    prepared source, and every split's and target's number is the local one."""
    from tests.bench.conftest import SHAPES

    from fewclip.bench import BenchConfig
    from fewclip.bench.synthetic import SyntheticVariant, synthetic_prepare

    prepare = synthetic_prepare(
        shapes=SHAPES, calibrate=False, n_views=3,
        variants={"alpha_sub": SyntheticVariant("alpha", 30, 3, 1.0)},
    )  # fmt: skip
    for protocol, options, key in (
        ("base-to-new", {}, "splits"),
        ("domain-generalisation", {"targets": ["alpha_sub"]}, "targets"),
    ):
        cfg = BenchConfig(
            methods=("zero-shot", "tip-adapter"), datasets=("alpha",), shots=(2,), seeds=(1,),
            backbones=("toy",), protocol=protocol, protocol_options=options,
            params={"tip-adapter": {"search_step": [10, 5]}},
        )  # fmt: skip
        local = run_bench(cfg, prepare, tmp_path / f"{protocol}-local.jsonl", quiet=True)
        on_ray = run_bench(
            cfg, prepare, tmp_path / f"{protocol}.jsonl", quiet=True,
            executor=RayExecutor(workers=2),
        )  # fmt: skip
        assert [r[key] for r in on_ray] == [r[key] for r in local]
        assert {r["executor"] for r in on_ray} == {"ray"}
