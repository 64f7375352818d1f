"""run_bench: row contents, lazy prepare, resume after an interrupt, truncated lines, LEAKY."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from fewclip import methods
from fewclip.bench import (
    BenchError,
    Prepared,
    completed_rows,
    format_tables,
    read_rows,
    run_bench,
    summarize,
)
from fewclip.bench.runner import _Appender
from fewclip.bench.synthetic import SyntheticSource
from fewclip.protocol import Protocol

from .conftest import SHAPES, CountingPrepare, tiny_config

ROW_KEYS = {
    "format", "hash", "cell", "method", "dataset", "backbone", "toy", "backbone_note", "shots",
    "seed", "protocol", "leaky", "mark", "accuracy", "n_test", "n_support", "n_val", "val_split",
    "prompts", "n_views", "params", "fitted", "dataset_fingerprint", "data", "versions",
    "device", "threads", "executor", "jobs", "seeds_batched", "plan_s", "fit_s", "eval_s",
    "wall_s", "peak_rss_mib", "peak_rss_scope", "cuda_peak_mib", "timestamp", "checksum",
}  # fmt: skip


def _unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def _expected_accuracy(row):
    """A row's test accuracy (%) recomputed from the synthetic data: zero-shot, or Tip-Adapter's
    logits (paper Eq. 6) at the row's selected (α, β) with the cache of the cell's support set."""
    data = CountingPrepare()(row["dataset"], row["backbone"])
    test = data.source.features("test")
    x, w = _unit(test.features.double()), _unit(data.text_weights.double())
    logits = 100 * x @ w.T
    if row["method"] == "tip-adapter":
        plan = Protocol(row["protocol"]).plan_source(
            data.source, shots=row["shots"], seed=row["seed"], classnames=list(data.classnames)
        )
        support = data.source.features("train", plan.support.indices, views=True)
        keys = _unit(support.views.double().mean(0))
        onehot = torch.nn.functional.one_hot(support.labels, len(data.classnames)).double()
        alpha, beta = row["params"]["alpha_"], row["params"]["beta_"]
        logits = logits + alpha * torch.exp(-beta * (1 - x @ keys.T)) @ onehot
    else:
        assert row["method"] == "zero-shot"
    return 100.0 * float((logits.argmax(1) == test.labels).double().mean())


def test_rows_hold_the_cell_result_and_environment(tmp_path, prepare, fit_counter):
    cfg = tiny_config()
    out = tmp_path / "r.jsonl"
    rows = run_bench(cfg, prepare, out, quiet=True)
    cells = list(cfg.cells())
    assert len(rows) == len(cells) == 16
    assert [r["hash"] for r in rows] == [c.hash for c in cells]
    assert read_rows(out) == rows  # what is returned is what is on disk
    for r, c in zip(rows, cells, strict=True):
        assert set(r) == ROW_KEYS
        assert r["cell"] == json.loads(json.dumps(c.to_dict()))
        assert (r["method"], r["dataset"], r["shots"], r["seed"]) == (
            c.method, c.dataset, c.shots, c.seed,
        )  # fmt: skip
        assert r["accuracy"] == pytest.approx(_expected_accuracy(r), abs=1e-4)
        assert r["n_test"] == SHAPES[c.dataset].test
        n_classes = SHAPES[c.dataset].classes
        assert r["n_support"] == c.shots * n_classes
        if methods.get(c.method).uses_validation:
            assert r["n_val"] == min(c.shots, 4) * n_classes
            assert r["val_split"] == "train"
        else:  # zero-shot never reads a validation set: none is loaded or reported
            assert r["n_val"] == 0
            assert r["val_split"] is None
        assert r["protocol"] == "fewshot-val"
        assert r["leaky"] is False
        assert r["mark"] == ""
        assert r["toy"] is False  # Prepared's defaults
        assert r["backbone_note"] is None
        assert r["n_views"] == 3
        assert r["prompts"] == "synthetic"
        assert r["params"]["seed" if c.method == "tip-adapter" else "scale"] is not None
        assert set(r["versions"]) >= {"fewclip", "torch", "python", "open_clip"}
        assert r["wall_s"] >= r["fit_s"] >= 0
        assert r["peak_rss_mib"] > 0
        assert r["dataset_fingerprint"].startswith("synthetic:")
        assert r["jobs"] == 1
        assert r["threads"] == torch.get_num_threads()
    tip = [r for r in rows if r["method"] == "tip-adapter"]
    assert len(tip) == 8
    # the cell's seed reaches methods with a seed; selected hyper-parameters are recorded
    assert all(r["params"]["seed"] == r["seed"] for r in tip)
    assert all("alpha_" in r["params"] and "beta_" in r["params"] for r in tip)
    assert all(r["params"]["search_step"] == [10, 5] for r in tip)
    # prepare: lazily, once per (dataset, backbone)
    assert prepare.calls == [("alpha", "toy"), ("beta", "toy")]
    assert len(fit_counter.calls) == 16


def test_rerun_runs_nothing_and_never_prepares(tmp_path, prepare, fit_counter):
    out = tmp_path / "r.jsonl"
    first = run_bench(tiny_config(), prepare, out, quiet=True)
    fit_counter.calls.clear()
    again = CountingPrepare()
    second = run_bench(tiny_config(), again, out, quiet=True)
    assert second == first
    assert fit_counter.calls == []
    assert again.calls == []
    assert completed_rows(tiny_config(), out) == first
    assert completed_rows(tiny_config(shots=(2, 4)), out) == [r for r in first if r["shots"] == 2]
    assert completed_rows(tiny_config(), tmp_path / "none.jsonl") == []
    assert len(out.read_text().splitlines()) == 16


def test_growing_the_grid_runs_only_new_cells(tmp_path, prepare, fit_counter):
    out = tmp_path / "r.jsonl"
    run_bench(tiny_config(shots=(1,)), prepare, out, quiet=True)
    assert len(fit_counter.calls) == 8
    fit_counter.calls.clear()
    rows = run_bench(tiny_config(), CountingPrepare(), out, quiet=True)
    assert len(rows) == 16
    assert {k for _, _, k, _ in fit_counter.calls} == {2}
    assert len(fit_counter.calls) == 8


def test_resume_after_interrupt_matches_an_uninterrupted_run(tmp_path, fit_counter):
    cfg = tiny_config()
    full = run_bench(cfg, CountingPrepare(), tmp_path / "full.jsonl", quiet=True)
    fit_counter.calls.clear()

    out = tmp_path / "resumed.jsonl"
    fit_counter.fail_at = 11  # "killed" while fitting the 11th cell
    with pytest.raises(KeyboardInterrupt):
        run_bench(cfg, CountingPrepare(), out, quiet=True)
    assert len(read_rows(out)) == 10
    started = list(fit_counter.calls)
    fit_counter.fail_at = None
    fit_counter.calls.clear()
    resumed = run_bench(cfg, CountingPrepare(), out, quiet=True)
    # no finished cell ran twice: the second run fitted exactly the 6 cells not recorded
    assert len(fit_counter.calls) == 16 - 10
    # the 10 recorded cells + the 6 of the second run are the grid, each exactly once (the
    # 11th, interrupted mid-fit, was never recorded and ran again)
    assert sorted(started[:10] + fit_counter.calls) == sorted(
        (c.method, c.dataset, c.shots, c.seed) for c in cfg.cells()
    )
    assert started[10] == fit_counter.calls[0]
    assert [r["hash"] for r in resumed] == [r["hash"] for r in full]
    assert [r["accuracy"] for r in resumed] == [r["accuracy"] for r in full]
    assert format_tables(summarize(resumed)) == format_tables(summarize(full))


def test_interrupt_in_a_subprocess_then_resume(tmp_path):
    """A real kill: the child process dies (os._exit) mid-grid; the parent resumes."""
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    out = tmp_path / "k.jsonl"
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from conftest import CountingPrepare, tiny_config
        from fewclip.bench import run_bench
        from fewclip.methods.base import Method

        original, n = Method.fit, [0]

        def fit(self, task):
            n[0] += 1
            if n[0] == 6:
                os._exit(9)  # no cleanup, no flush: as abrupt as a kill
            return original(self, task)

        Method.fit = fit
        run_bench(tiny_config(), CountingPrepare(), {str(out)!r}, quiet=True)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == 9, proc.stderr.decode()[-2000:]
    assert len(read_rows(out)) == 5
    rows = run_bench(tiny_config(), CountingPrepare(), out, quiet=True)
    assert len(rows) == 16
    assert len(read_rows(out)) == 16


def test_torn_last_line_is_cut_off_and_kept_aside(tmp_path, prepare, fit_counter):
    out = tmp_path / "t.jsonl"
    rows = run_bench(tiny_config(), prepare, out, quiet=True)
    lines = out.read_bytes().split(b"\n")[:-1]
    fragment = lines[-1][: len(lines[-1]) // 2]
    # a run killed mid-write: the last row is half there, without its newline
    out.write_bytes(b"\n".join(lines[:-1]) + b"\n" + fragment)
    with pytest.warns(RuntimeWarning, match="truncated last line"):
        assert len(read_rows(out)) == 15
    fit_counter.calls.clear()
    with pytest.warns(RuntimeWarning, match=r"moved a torn last line \(\d+ bytes.*t\.jsonl\.torn"):
        again = run_bench(tiny_config(), CountingPrepare(), out, quiet=True)
    assert len(fit_counter.calls) == 1  # only the lost cell
    assert [r["hash"] for r in again] == [r["hash"] for r in rows]
    raw = out.read_bytes()
    # valid JSONL again: every line parses, as a strict reader (json.loads per line) needs
    assert [json.loads(x)["hash"] for x in raw.splitlines()] == [r["hash"] for r in rows]
    assert raw.endswith(b"\n")
    assert (tmp_path / "t.jsonl.torn").read_bytes() == fragment + b"\n"  # nothing lost
    # a clean file is left alone: no warning, no side file growth
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run_bench(tiny_config(), CountingPrepare(), out, quiet=True)
    assert (tmp_path / "t.jsonl.torn").read_bytes() == fragment + b"\n"


def test_a_damaged_row_in_the_middle_is_moved_aside_and_its_cell_runs_again(
    tmp_path, prepare, fit_counter
):
    """A digit changed inside a row (still valid JSON, a wrong accuracy): its checksum fails,
    so it is moved to NAME.torn, its cell runs again, and the table is the clean one."""
    out = tmp_path / "m.jsonl"
    rows = run_bench(tiny_config(), prepare, out, quiet=True)
    lines = out.read_text().splitlines()
    row = json.loads(lines[3])
    text = lines[3].replace(f'"accuracy": {row["accuracy"]}', f'"accuracy": {row["accuracy"] + 1}')
    assert text != lines[3]
    out.write_text("\n".join([*lines[:3], text, *lines[4:]]) + "\n")
    fit_counter.calls.clear()
    with pytest.warns(RuntimeWarning, match=r"moved 1 damaged lines"):
        again = run_bench(tiny_config(), CountingPrepare(), out, quiet=True)
    assert len(fit_counter.calls) == 1
    assert sorted(r["hash"] for r in again) == sorted(r["hash"] for r in rows)
    assert {r["hash"]: r["accuracy"] for r in again} == {r["hash"]: r["accuracy"] for r in rows}
    assert (tmp_path / "m.jsonl.torn").read_text() == text + "\n"
    assert len(out.read_text().splitlines()) == 16


def test_a_file_that_is_one_torn_line_is_emptied(tmp_path, prepare):
    out = tmp_path / "one.jsonl"
    out.write_bytes(b'{"hash": "ab')
    with pytest.warns(RuntimeWarning, match="moved a torn last line"):
        rows = run_bench(tiny_config(), prepare, out, quiet=True)
    assert len(rows) == 16
    assert len(out.read_bytes().splitlines()) == 16
    assert (tmp_path / "one.jsonl.torn").read_bytes() == b'{"hash": "ab\n'


def test_a_second_writer_is_refused(tmp_path, prepare):
    out = tmp_path / "l.jsonl"
    holder = _Appender(out)
    try:
        with pytest.raises(BenchError, match="another fewclip bench run"):
            run_bench(tiny_config(), prepare, out, quiet=True)
    finally:
        holder.close()


def test_oracle_test_rows_and_tables_are_marked_leaky(tmp_path, prepare):
    cfg = tiny_config(protocol="oracle-test", methods=("tip-adapter",), seeds=(1,))
    rows = run_bench(cfg, prepare, tmp_path / "o.jsonl", quiet=True)
    assert rows
    assert all(r["leaky"] is True and r["mark"] == "LEAKY" for r in rows)
    assert all(r["val_split"] == "test" and r["protocol"] == "oracle-test" for r in rows)
    for fmt in ("text", "markdown"):
        text = format_tables(summarize(rows), fmt)
        assert "LEAKY" in text
        assert "†" in text


def test_failing_cells_raise_or_are_skipped(tmp_path, prepare):
    cfg = tiny_config(
        methods=("zero-shot", "tip-adapter-f"), params={"tip-adapter-f": {"epochs": -1}}
    )
    with pytest.raises(ValueError, match="epochs"):
        run_bench(cfg, prepare, tmp_path / "a.jsonl", quiet=True)
    with pytest.warns(RuntimeWarning, match=r"tip-adapter-f .*failed.*not recorded"):
        rows = run_bench(cfg, CountingPrepare(), tmp_path / "b.jsonl", quiet=True, on_error="skip")
    assert {r["method"] for r in rows} == {"zero-shot"}
    assert len(rows) == 8


def test_a_failing_prepare_skips_its_dataset_only(tmp_path):
    inner = CountingPrepare()

    def prepare(dataset, backbone):
        if dataset == "alpha":
            raise FileNotFoundError("no features for alpha")
        return inner(dataset, backbone)

    with pytest.raises(FileNotFoundError):
        run_bench(tiny_config(), prepare, tmp_path / "p.jsonl", quiet=True)
    with pytest.warns(RuntimeWarning, match=r"prepare\('alpha', 'toy'\) failed.*8 cell"):
        rows = run_bench(tiny_config(), prepare, tmp_path / "q.jsonl", quiet=True, on_error="skip")
    assert {r["dataset"] for r in rows} == {"beta"}
    assert len(rows) == 8


def test_views_are_limited_and_checked(tmp_path, prepare):
    rows = run_bench(
        tiny_config(views=2, methods=("tip-adapter",)), prepare, tmp_path / "v.jsonl", quiet=True
    )
    assert {r["n_views"] for r in rows} == {2}
    with pytest.raises(BenchError, match="views=5.*only 3"):
        run_bench(tiny_config(views=5), CountingPrepare(), tmp_path / "w.jsonl", quiet=True)


def test_bad_prepare_results_are_named(tmp_path):
    with pytest.raises(BenchError, match=r"prepare\('alpha', 'toy'\) returned dict"):
        run_bench(tiny_config(), lambda d, b: {}, tmp_path / "x.jsonl", quiet=True)


def test_changed_data_fingerprint_warns(tmp_path):
    out = tmp_path / "f.jsonl"
    cfg1 = tiny_config(shots=(1,))
    run_bench(cfg1, CountingPrepare(), out, quiet=True)
    other = CountingPrepare(seed=99)  # different worlds → different fingerprints
    with pytest.warns(RuntimeWarning, match="fingerprint is now"):
        run_bench(tiny_config(), other, out, quiet=True)


def test_progress_and_messages_respect_quiet(tmp_path, prepare, capsys):
    run_bench(tiny_config(seeds=(1,)), prepare, tmp_path / "q.jsonl", quiet=True)
    assert capsys.readouterr().err == ""
    run_bench(tiny_config(), CountingPrepare(), tmp_path / "q.jsonl", progress=False)
    err = capsys.readouterr().err
    assert "4 of 8" not in err
    assert "8 of 16 cells already done" in err
    assert "ran 8 cells" in err


def test_synthetic_source_rows_depend_only_on_split_and_index():
    from fewclip.testing import SyntheticWorld

    world = SyntheticWorld(4, 16, seed=3)
    src = SyntheticSource(world, {"train": 40, "test": 12}, n_views=2)
    a = src.features("train", [5, 30, 7])
    b = src.features("train", [7, 5], views=True)
    assert torch.equal(a.features[[2, 0]], b.features)
    assert b.views is not None
    assert b.views.shape == (2, 2, 16)
    assert torch.equal(a.labels, src.labels("train")[[5, 30, 7]])
    full = src.features("test")
    assert full is src.features("test")  # whole-split requests are cached
    assert torch.equal(full.features[[3]], src.features("test", [3]).features)
    assert src.splits() == ["train", "test"]
    with pytest.raises(KeyError, match="no 'val' split"):
        src.labels("val")
    with pytest.raises(IndexError, match=r"\[0, 40\)"):
        src.features("train", [40])


def test_prepared_is_a_plain_dataclass():
    p = Prepared(source=None, classnames=["a"], text_weights=torch.zeros(1, 2))  # type: ignore[arg-type]
    assert p.meta == {}
    assert p.class_index is None
    assert p.fingerprint is None


def test_warnings_do_not_leak_from_a_clean_run(tmp_path, prepare):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run_bench(tiny_config(seeds=(1,)), prepare, tmp_path / "c.jsonl", quiet=True)


def test_synthetic_prepare_accepts_benchmark_aliases():
    from fewclip.bench.synthetic import synthetic_prepare

    prep = synthetic_prepare(calibrate=False, dim=8)
    p = prep("fgvc_aircraft", "RN50")
    assert len(p.classnames) == 100
    assert p.source.labels("test").numel() == 3_333
    assert len(prep("pets", "RN50").classnames) == 37
    with pytest.raises(KeyError, match="no synthetic shape"):
        prep("mnist", "RN50")


# -- parallel cells (jobs > 1) ------------------------------------------------------------------
def _result(row):
    """What a cell computed (accuracy, sizes, selected hyper-parameters), not how long it took."""
    keep = ("hash", "accuracy", "n_test", "n_support", "n_val", "params", "fitted")
    return {k: row[k] for k in keep}


def test_parallel_cells_give_the_serial_results(tmp_path, prepare):
    cfg = tiny_config(methods=("zero-shot", "tip-adapter", "linear-probe"), seeds=(1, 2, 3))
    serial = run_bench(cfg, CountingPrepare(), tmp_path / "s.jsonl", quiet=True)
    out = tmp_path / "p.jsonl"
    threads = torch.get_num_threads()
    parallel = run_bench(cfg, prepare, out, quiet=True, jobs=2)
    assert torch.get_num_threads() == threads  # the workers' one thread stays in the workers
    # every cell once, returned in config order, same results as one process
    assert [r["hash"] for r in parallel] == [c.hash for c in cfg.cells()]
    assert [_result(r) for r in parallel] == [_result(r) for r in serial]
    assert all(r["jobs"] == 2 and r["threads"] == 1 for r in parallel)
    assert all(r["jobs"] == 1 for r in serial)
    # prepare ran here, once per dataset (the workers are forked after it)
    assert prepare.calls == [("alpha", "toy"), ("beta", "toy")]
    # the file holds each cell once, written as cells finished (more shots first per dataset)
    on_disk = read_rows(out)
    assert sorted(r["hash"] for r in on_disk) == sorted(r["hash"] for r in parallel)
    alpha = [r["shots"] for r in on_disk if r["dataset"] == "alpha"]
    assert alpha.index(2) < alpha.index(1)
    # rerun: nothing left to do, nothing prepared
    again = CountingPrepare()
    assert run_bench(cfg, again, out, quiet=True, jobs=2) == parallel
    assert again.calls == []


def test_parallel_cells_resume_a_partial_file(tmp_path, prepare):
    out = tmp_path / "r.jsonl"
    first = run_bench(tiny_config(shots=(1,)), prepare, out, quiet=True, jobs=2)
    rows = run_bench(tiny_config(), CountingPrepare(), out, quiet=True, jobs=3)
    assert len(first) == 8
    assert len(rows) == 16
    assert [r for r in rows if r["shots"] == 1] == first
    assert len(read_rows(out)) == 16


def test_parallel_failing_cells_raise_or_are_skipped(tmp_path, prepare):
    cfg = tiny_config(
        methods=("zero-shot", "tip-adapter-f"), params={"tip-adapter-f": {"epochs": -1}}
    )
    with pytest.raises(ValueError, match="epochs"):
        run_bench(cfg, prepare, tmp_path / "a.jsonl", quiet=True, jobs=2)
    with pytest.warns(RuntimeWarning, match=r"tip-adapter-f .*failed.*not recorded"):
        rows = run_bench(
            cfg, CountingPrepare(), tmp_path / "b.jsonl", quiet=True, on_error="skip", jobs=2
        )
    assert {r["method"] for r in rows} == {"zero-shot"}
    assert len(rows) == 8
    assert len(read_rows(tmp_path / "b.jsonl")) == 8


def test_a_dead_worker_is_reported(tmp_path, prepare, monkeypatch):
    import os
    import time

    from fewclip.methods.base import Method

    real = Method.fit
    out = tmp_path / "d.jsonl"

    def fit(self, task):
        if self.name == "tip-adapter":
            # The first cells are a zero-shot cell, then a tip-adapter one, taken in that order
            # by the two workers: the worker that dies waits until the other one's row is on
            # disk, so that a finished cell exists before the pool breaks. The deadline only
            # bounds a broken run (the assertions below then fail).
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not (out.exists() and out.read_bytes()):
                time.sleep(0.01)
            os._exit(3)  # a worker killed mid-cell (e.g. by the out-of-memory killer)
        return real(self, task)

    monkeypatch.setattr(Method, "fit", fit)
    cfg = tiny_config(datasets=("alpha",))
    with pytest.raises(BenchError, match="worker process died"):
        run_bench(cfg, prepare, out, quiet=True, on_error="skip", jobs=2)
    # what finished before is kept; the rest is left for a later run
    kept = read_rows(out)
    assert kept
    assert all(r["method"] == "zero-shot" for r in kept)


@pytest.mark.parametrize("jobs", [0, -1, 1.5, True])
def test_bad_jobs_are_named(tmp_path, prepare, jobs):
    with pytest.raises(ValueError, match="jobs: expected a positive integer"):
        run_bench(tiny_config(), prepare, tmp_path / "x.jsonl", quiet=True, jobs=jobs)


def test_parallel_cells_need_the_cpu(tmp_path, prepare):
    with pytest.raises(ValueError, match="device is 'cuda'"):
        run_bench(tiny_config(device="cuda"), prepare, tmp_path / "x.jsonl", quiet=True, jobs=2)


class Unpicklable(Exception):
    """Pickles (by reference, with its message as the only argument) but cannot be rebuilt."""

    def __init__(self, a, b):
        super().__init__(f"{a}/{b}")


def test_a_cell_error_that_cannot_be_pickled_still_reaches_the_caller(
    tmp_path, prepare, monkeypatch
):
    from fewclip.methods.base import Method

    real = Method.fit

    def fit(self, task):
        if self.name == "tip-adapter":
            raise Unpicklable("bad", "fit")
        return real(self, task)

    monkeypatch.setattr(Method, "fit", fit)
    cfg = tiny_config(datasets=("alpha",))
    with pytest.warns(
        RuntimeWarning, match=r"tip-adapter .*failed \(RuntimeError: Unpicklable: bad/fit"
    ):
        rows = run_bench(cfg, prepare, tmp_path / "u.jsonl", quiet=True, on_error="skip", jobs=2)
    assert {r["method"] for r in rows} == {"zero-shot"}
