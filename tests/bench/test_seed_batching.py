"""run_bench with seed batching: cells that differ only in seed fit as one batched model
(``batch_seeds="always"``; ``"auto"``, the default, batches only where the method says it is
faster, which is not on a CPU), and every row equals the row of its cell run alone except
timings and memory, serially, with forked workers, on Ray and when resuming a half-finished
batch."""

from __future__ import annotations

import warnings

import pytest

from fewclip.bench import read_rows, run_bench
from fewclip.bench.runner import run_cell, run_seed_batch, seed_batches
from fewclip.errors import InvalidValueError
from fewclip.methods.clip_adapter import CLIPAdapter

from .conftest import FAST, CountingPrepare, tiny_config

#: What may differ between a batched row and the row of its cell run alone: how long it took,
#: how much memory it held, and the record of the batching itself.
HOW = {
    "seeds_batched", "plan_s", "fit_s", "eval_s", "wall_s", "peak_rss_mib", "peak_rss_scope",
    "cuda_peak_mib", "timestamp", "checksum", "threads", "jobs",
}  # fmt: skip
BATCHED = ("clip-adapter", "tip-adapter-f")
QUICK = {
    **FAST,
    "clip-adapter": {"epochs": 3, "batch_size": 4},
    "tip-adapter-f": {"epochs": 4, "batch_size": 4, "search_step": [6, 4]},
}


def _config(**kw):
    base = {
        "methods": ("zero-shot", "clip-adapter", "tip-adapter-f"),
        "shots": (1, 3),
        "seeds": (1, 2, 3),
        "params": QUICK,
    }
    return tiny_config(**{**base, **kw})


def _what(row):
    return {k: v for k, v in row.items() if k not in HOW}


def _assert_rows_equal(batched, alone):
    assert [r["hash"] for r in batched] == [r["hash"] for r in alone]
    for b, a in zip(batched, alone, strict=True):
        assert _what(b) == _what(a), (b["method"], b["dataset"], b["shots"], b["seed"])


def test_seed_batches_group_cells_that_differ_only_in_seed():
    cells = list(_config().cells())
    units = seed_batches(cells, batch_seeds="always")
    assert sum(len(u) for u in units) == len(cells)
    assert sorted(c.hash for u in units for c in u) == sorted(c.hash for c in cells)
    for unit in units:
        first = unit[0]
        if first.method in BATCHED:
            assert [c.seed for c in unit] == [1, 2, 3]
            same = {(c.method, c.dataset, c.backbone, c.shots, str(c.params)) for c in unit}
            assert len(same) == 1
        else:
            assert len(unit) == 1
    # order of the first cell of each unit: the config's
    firsts = [u[0] for u in units]
    assert firsts == sorted(firsts, key=cells.index)
    assert all(len(u) == 1 for u in seed_batches(cells, batch_seeds="never"))
    # other parameters, shots or datasets are other units
    assert len([u for u in units if u[0].method == "clip-adapter"]) == 2 * 2  # 2 datasets x 2 K


def test_generalisation_protocols_run_cells_alone():
    cells = list(_config(protocol="base-to-new").cells())
    assert all(len(u) == 1 for u in seed_batches(cells, batch_seeds="always"))


def test_batched_rows_equal_the_rows_of_cells_run_alone(tmp_path):
    cfg = _config()
    batched = run_bench(
        cfg, CountingPrepare(), tmp_path / "b.jsonl", quiet=True, batch_seeds="always"
    )
    alone = run_bench(cfg, CountingPrepare(), tmp_path / "a.jsonl", quiet=True, batch_seeds="never")
    _assert_rows_equal(batched, alone)
    on_disk = {r["hash"]: r for r in read_rows(tmp_path / "b.jsonl")}
    assert [on_disk[r["hash"]] for r in batched] == batched
    for r in batched:
        assert r["seeds_batched"] == (3 if r["method"] in BATCHED else 1)
        assert r["peak_rss_scope"] == ("seeds" if r["method"] in BATCHED else "cell")
        assert r["wall_s"] == pytest.approx(r["plan_s"] + r["fit_s"] + r["eval_s"], abs=1e-3)
    assert all(r["seeds_batched"] == 1 for r in alone)
    # the fit time of a batch is shared equally by its seeds
    for method in BATCHED:
        for dataset in ("alpha", "beta"):
            fits = {r["fit_s"] for r in batched if (r["method"], r["dataset"], r["shots"]) == (
                method, dataset, 3)}  # fmt: skip
            assert len(fits) == 1
    # the check can fail: the seeds' rows differ from one another (a mix-up would show)
    for method in BATCHED:
        rows = [r for r in alone if (r["method"], r["dataset"], r["shots"]) == (method, "alpha", 3)]
        assert len({r["accuracy"] for r in rows}) > 1, rows


def test_a_seed_batch_gives_the_rows_of_run_cell():
    cfg = _config(datasets=("alpha",), shots=(3,), methods=("tip-adapter-f",))
    prepared = CountingPrepare()("alpha", "toy")
    cells = list(cfg.cells())
    together = run_seed_batch(cells, prepared, force=True)
    assert [c for c, _ in together] == cells
    for cell, row in together:
        assert isinstance(row, dict)
        assert row["seeds_batched"] == 3
        assert _what(row) == _what(run_cell(cell, prepared))
    # given out of order, each cell still gets its own row
    shuffled = [cells[2], cells[0], cells[1]]
    for cell, row in run_seed_batch(shuffled, prepared, force=True):
        assert isinstance(row, dict)
        assert row["seed"] == cell.seed
        assert _what(row) == _what(dict(together)[cell])


def test_parallel_batched_rows_equal_the_rows_of_cells_run_alone(tmp_path):
    cfg = _config()
    alone = run_bench(cfg, CountingPrepare(), tmp_path / "a.jsonl", quiet=True, batch_seeds="never")
    parallel = run_bench(
        cfg, CountingPrepare(), tmp_path / "p.jsonl", quiet=True, jobs=2, batch_seeds="always"
    )
    _assert_rows_equal(parallel, alone)
    assert all(r["jobs"] == 2 and r["threads"] == 1 for r in parallel)
    assert {r["seeds_batched"] for r in parallel if r["method"] in BATCHED} == {3}
    assert sorted(r["hash"] for r in read_rows(tmp_path / "p.jsonl")) == sorted(
        r["hash"] for r in parallel
    )


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_half_finished_batch_resumes_with_the_seeds_left(tmp_path, jobs):
    """Seed 2 already in the file (from an unbatched run): a batched run fits seeds 1 and 3
    together and leaves seed 2's row as it was."""
    cfg = _config()
    out = tmp_path / "r.jsonl"
    first = run_bench(_config(seeds=(2,)), CountingPrepare(), out, quiet=True, batch_seeds="never")
    rows = run_bench(cfg, CountingPrepare(), out, quiet=True, jobs=jobs, batch_seeds="always")
    alone = run_bench(cfg, CountingPrepare(), tmp_path / "a.jsonl", quiet=True, batch_seeds="never")
    _assert_rows_equal(rows, alone)
    assert [r for r in rows if r["seed"] == 2] == first
    for r in rows:
        if r["method"] in BATCHED:
            assert r["seeds_batched"] == (1 if r["seed"] == 2 else 2)
    assert len(read_rows(out)) == len(rows) == cfg.n_cells


def test_a_failing_batched_fit_fails_its_cells_only(tmp_path, monkeypatch):
    def broken(cls, models, tasks):
        raise RuntimeError("broken batch")

    monkeypatch.setattr(CLIPAdapter, "_fit_seeds", classmethod(broken))
    cfg = _config(datasets=("alpha",), shots=(1,))
    with pytest.raises(RuntimeError, match="broken batch"):
        run_bench(
            cfg, CountingPrepare(), tmp_path / "raise.jsonl", quiet=True, batch_seeds="always"
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = run_bench(
            cfg, CountingPrepare(), tmp_path / "skip.jsonl", quiet=True, on_error="skip",
            batch_seeds="always",
        )  # fmt: skip
    assert sorted({r["method"] for r in rows}) == ["tip-adapter-f", "zero-shot"]
    failed = [str(w.message) for w in caught if "broken batch" in str(w.message)]
    assert len(failed) == 3
    assert all("clip-adapter" in m for m in failed)
    # neither "never" nor "auto" on a CPU touches the batched fit
    for mode in ("never", "auto"):
        rows = run_bench(
            cfg, CountingPrepare(), tmp_path / f"{mode}.jsonl", quiet=True, batch_seeds=mode
        )
        assert len(rows) == cfg.n_cells


def test_a_seed_whose_plan_fails_leaves_the_others_batched(tmp_path):
    """Seeds of one batch with one plan failing (too few images for the shots at one seed
    cannot happen with one dataset, so a seed batch is given a cell of another draw size):
    the cell that fails gets its error, the rest their rows."""
    cfg = _config(datasets=("alpha",), shots=(3,), methods=("clip-adapter",))
    prepared = CountingPrepare()("alpha", "toy")
    cells = list(cfg.cells())
    bad = _config(datasets=("alpha",), shots=(500,), methods=("clip-adapter",))
    broken = next(iter(bad.cells()))
    out = run_seed_batch([cells[0], broken, cells[1]], prepared, force=True)
    assert isinstance(out[1][1], Exception)
    for cell, row in (out[0], out[2]):
        assert isinstance(row, dict)
        assert row["seeds_batched"] == 2
        assert _what(row) == _what(run_cell(cell, prepared))


class _InlineRay:
    """The part of ``RayExecutor`` that ``_ray_outcomes`` uses, run in this process: each item's
    work (or the exception it raised) in reverse order, as a pool may finish them."""

    def map(self, setup, payload, work, items, *, gpus_per_worker=0.0):
        state = setup(payload)
        for k in reversed(range(len(items))):
            try:
                yield k, work(state, items[k])
            except Exception as e:
                yield k, e


def test_units_on_ray_actors_give_each_cell_its_row():
    """The Ray path runs a unit per actor call and hands back each cell's row (the actors
    themselves are tested in tests/scale/test_ray_bench.py where Ray is installed)."""
    from fewclip.bench.runner import _ray_outcomes

    cfg = _config(datasets=("alpha",), shots=(3,))
    prepared = CountingPrepare()("alpha", "toy")
    cells = list(cfg.cells())
    units = seed_batches(cells, batch_seeds="always")
    got = dict(_ray_outcomes(units, prepared, "cpu", 8192, _InlineRay(), True))  # type: ignore[arg-type]
    assert sorted(c.hash for c in got) == sorted(c.hash for c in cells)
    for cell in cells:
        row = got[cell]
        assert isinstance(row, dict)
        assert row["seeds_batched"] == (3 if cell.method in BATCHED else 1)
        assert _what(row) == _what(run_cell(cell, prepared))


def test_auto_batches_where_the_method_says_it_pays(tmp_path):
    """The default: not on a CPU (each cell alone, as before), on an accelerator yes; a bad
    mode is named."""
    cfg = _config(datasets=("alpha",), shots=(1,))
    cells = list(cfg.cells())
    assert all(len(u) == 1 for u in seed_batches(cells))
    assert all(len(u) == 1 for u in seed_batches(cells, device="cpu", batch_seeds="auto"))
    on_gpu = seed_batches(cells, device="cuda")
    assert sorted(len(u) for u in on_gpu) == [1, 1, 1, 3, 3]
    rows = run_bench(cfg, CountingPrepare(), tmp_path / "auto.jsonl", quiet=True)
    alone = run_bench(
        cfg, CountingPrepare(), tmp_path / "never.jsonl", quiet=True, batch_seeds="never"
    )
    assert {r["seeds_batched"] for r in rows} == {1}
    _assert_rows_equal(rows, alone)
    with pytest.raises(InvalidValueError, match="batch_seeds: expected one of auto"):
        run_bench(cfg, CountingPrepare(), tmp_path / "bad.jsonl", batch_seeds="yes")
    with pytest.raises(InvalidValueError, match="batch_seeds"):
        seed_batches(cells, batch_seeds=True)  # type: ignore[arg-type]
