"""Run a benchmark grid cell by cell into an append-only JSONL file that survives interruption.

``run_bench(config, prepare, out)`` walks ``config.cells()`` (dataset → backbone → shots →
seed → method). For each cell whose hash is not yet in ``out`` it plans the splits, builds the
task, fits the method and evaluates it through ``fewclip.protocol`` (the one reader of test
features), then appends one JSON line and fsyncs it. A run killed at any point resumes where it
stopped: finished cells are skipped by hash, and a torn last line is cut off (kept in a side
file, with a warning) before the next row is appended, so the file stays valid JSONL.

``prepare(dataset, backbone)`` is supplied by the caller (the CLI: a feature-store-backed
source; benchmarks and tests: ``fewclip.bench.synthetic``) and is called lazily, once per
(dataset, backbone) that still has cells to run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import math
import multiprocessing
import os
import pickle
import platform
import resource
import signal
import sys
import time
import warnings
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor

from fewclip._io import atomic_write
from fewclip.bench.config import BENCH_FORMAT, BenchConfig, Cell, canonical_json
from fewclip.bench.results import parse_row, read_rows, row_checksum
from fewclip.errors import FewclipError, InvalidTypeError, InvalidValueError
from fewclip.executors import Executor, LocalExecutor, RayExecutor
from fewclip.protocol import FeatureSource, Protocol, build_task, evaluate
from fewclip.task import FeatureSet
from fewclip.text_tower import TextTower

__all__ = [
    "BATCH_SEEDS",
    "BenchError",
    "Prepared",
    "completed_rows",
    "run_bench",
    "run_cell",
    "run_seed_batch",
    "seed_batches",
    "versions",
]


class BenchError(FewclipError, RuntimeError):
    """A benchmark run cannot proceed (output locked by another run, bad ``prepare`` result)."""


@dataclass
class Prepared:
    """What ``prepare(dataset, backbone)`` returns: everything a cell needs besides the method.

    Attributes:
        source: the dataset's features (``labels(split)``, ``features(split, index, views=)``;
            ``train`` with augmented views, ``test``, and ``val`` for protocols that need it).
        classnames: the C class names, in class-id order.
        text_weights: (C, D) zero-shot classifier built with the config's prompts.
        fingerprint: identity of the data behind ``source`` (e.g. the feature store key);
            recorded in every row, compared with earlier rows of the same dataset.
        class_index: logit columns to keep at evaluation (ImageNet-A/-R); ``None`` = all.
        meta: JSON-able facts recorded in every row under ``data``: ``prompts`` (the prompt
            set actually used), ``n_views``, sizes, paths, ...
        toy: the backbone is a toy (tiny, random or toy-trained weights: it never saw a real
            image); recorded in every row as ``toy`` and marked TOY in tables and plots.
        backbone_note: what the backbone actually is (e.g. where a toy checkpoint lives);
            recorded in every row as ``backbone_note``.
        text_tower: the backbone's text encoder below the tokenizer
            (``backbone.text_tower()``), which the prompt learners (CoOp) train through;
            ``None`` when there is none (their cells then fail with a clear error).
        class_ids: a shared id of each class across datasets (the ImageNet family: ImageNet-1k
            class ids), by which ``domain-generalisation`` maps a target's classes onto the
            source's; ``None``: the target's ``class_index`` (or all classes in order) is the
            map.
        targets: under ``cross-dataset`` and ``domain-generalisation``, the target datasets'
            ``Prepared`` by name (only their ``test`` split, class names, text weights and
            ``class_index`` are read). ``run_bench`` fills it in from ``prepare``; a
            ``prepare`` function leaves it empty.
    """

    source: FeatureSource
    classnames: Sequence[str]
    text_weights: Tensor
    fingerprint: str | None = None
    class_index: Sequence[int] | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    toy: bool = False
    backbone_note: str | None = None
    text_tower: TextTower | None = None
    class_ids: Sequence[int] | None = None
    targets: Mapping[str, Prepared] = field(default_factory=dict)


PrepareFn = Callable[[str, str], Prepared]
_Outcomes = Generator[tuple[Cell, "dict[str, Any] | BaseException"], None, None]


# -- environment --------------------------------------------------------------------------
def versions() -> dict[str, str | None]:
    """Versions recorded in every row: fewclip, torch, python, numpy, open_clip (None when not
    installed)."""
    from fewclip._version import __version__

    def dist(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {
        "fewclip": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "numpy": dist("numpy"),
        "open_clip": dist("open_clip_torch") or dist("open-clip-torch"),
    }


class _PeakRSS:
    """Peak resident memory over a block: Linux's VmHWM reset through /proc/self/clear_refs
    (scope ``"cell"``); elsewhere the process high-water mark (scope ``"process"``)."""

    def __init__(self) -> None:
        self.scope = "process"
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            if self._hwm_kib() is not None:
                self.scope = "cell"
        except OSError:
            pass

    @staticmethod
    def _hwm_kib() -> int | None:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1])
        except (OSError, ValueError, IndexError):
            return None
        return None

    def mib(self) -> float:
        kib = self._hwm_kib() if self.scope == "cell" else None
        if kib is None:
            ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            return ru / 2**20 if sys.platform == "darwin" else ru / 2**10
        return kib / 2**10


# -- source wrappers ----------------------------------------------------------------------
class _ViewLimit:
    """Passes a source through, keeping the first ``n`` augmented views."""

    def __init__(self, source: FeatureSource, n: int, dataset: str) -> None:
        self._source, self._n, self._dataset = source, n, dataset

    def __getattr__(self, name: str) -> Any:  # splits() and anything else
        return getattr(self._source, name)

    def labels(self, split: str) -> Any:
        return self._source.labels(split)

    def features(
        self, split: str, index: Sequence[int] | None = None, *, views: bool = False
    ) -> FeatureSet:
        fs = self._source.features(split, index, views=views)
        if views and isinstance(fs, FeatureSet) and fs.views is not None:
            if fs.n_views < self._n:
                raise BenchError(
                    f"views={self._n}: the {self._dataset!r} source has only {fs.n_views} "
                    "augmented views per image; lower views or extract more"
                )
            fs = FeatureSet(fs.features, fs.labels, fs.views[: self._n])
        return fs


class _ChunkedLogits:
    """A fitted model whose ``logits`` run over ``rows`` query rows at a time (bounded memory
    on 50,000-image test sets; valid for every method whose logits are row-independent).
    Everything else is the model's own (``name``, ``get_params``, fitted attributes)."""

    def __init__(self, model: Any, rows: int) -> None:
        self._model, self._rows = model, rows

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def logits(self, x: Tensor) -> Tensor:
        if x.shape[0] <= self._rows:
            return self._model.logits(x)  # type: ignore[no-any-return]
        with torch.no_grad():
            parts = [
                self._model.logits(x[i : i + self._rows]).detach().cpu()
                for i in range(0, x.shape[0], self._rows)
            ]
        return torch.cat(parts)


# -- JSONL output -------------------------------------------------------------------------
class _Appender:
    """Append-only JSONL writer: one complete line per write, each with its checksum, flushed
    and fsynced; an exclusive advisory lock keeps two runs off the same file.

    Before anything is appended, under the lock, damaged lines (a torn last line from a run
    killed mid-write, or a line that is not JSON or fails its checksum) are moved to
    ``NAME.torn`` and the file is rewritten without them (atomically), with one warning: the
    file stays valid JSONL and their cells run again (see :meth:`_remove_damaged_lines`).
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._f = self._open_locked()
        self._remove_damaged_lines()

    def _open_locked(self) -> IO[bytes]:
        """The file opened for appending with its lock held; the lock is taken on the inode
        that the path names (a rewrite replaces the file: a lock on the old one is stale)."""
        while True:
            f: IO[bytes] = open(self.path, "ab")  # noqa: SIM115 (closed in close())
            try:
                import fcntl

                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except ImportError:  # pragma: no cover - non-POSIX
                return f
            except OSError:
                f.close()
                raise BenchError(
                    f"{self.path}: another fewclip bench run is writing this file; wait for it "
                    "or choose another output"
                ) from None
            try:
                same = os.fstat(f.fileno()).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return f
            f.close()

    def _remove_damaged_lines(self) -> None:
        raw = self.path.read_bytes()
        if not raw:
            return
        lines = raw.split(b"\n")
        tail = lines.pop()  # b"" when the file ends with a newline, else a torn last line
        keep, damaged = [], []
        for line in lines:
            if line.strip() and parse_row(line)[0] is None:
                damaged.append(line)
            else:
                keep.append(line)
        if tail:
            damaged.append(tail)
        if not damaged:
            return
        side = self.path.with_name(self.path.name + ".torn")
        with open(side, "ab") as f:  # first: the damaged lines are never lost
            f.write(b"".join(line + b"\n" for line in damaged))
            f.flush()
            os.fsync(f.fileno())
        atomic_write(self.path, b"".join(line + b"\n" for line in keep))
        old, self._f = self._f, self._open_locked()  # the new file's lock, then the old's off
        old.close()
        what = "a torn last line" if tail and len(damaged) == 1 else f"{len(damaged)} damaged lines"
        warnings.warn(
            f"{self.path}: moved {what} ({sum(map(len, damaged))} bytes; an interrupted run or "
            f"a damaged file) to {side}; their cells run again",
            RuntimeWarning,
            stacklevel=3,
        )

    def append(self, row: dict[str, Any]) -> None:
        """Write ``row`` as one line, with its ``checksum`` (also set in ``row`` itself, so
        that what the caller keeps is what is on disk)."""
        row["checksum"] = row_checksum(row)
        line = json.dumps(row, ensure_ascii=False, allow_nan=True, sort_keys=False) + "\n"
        self._f.write(line.encode("utf-8"))
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


# -- one cell -----------------------------------------------------------------------------
def _fitted_values(model: Any) -> dict[str, Any]:
    """Scalar fitted attributes (``alpha_``, ``C_``, ``best_epoch_``, ...)."""
    out: dict[str, Any] = {}
    for k, v in sorted(vars(model).items()):
        if not k.endswith("_") or k.startswith("_"):
            continue
        if isinstance(v, (bool, int, str)) or v is None:
            out[k] = v
        elif isinstance(v, float):
            out[k] = v if math.isfinite(v) else repr(v)
    return out


def run_cell(
    cell: Cell,
    prepared: Prepared,
    *,
    device: str = "cpu",
    eval_rows: int | None = 8192,
) -> dict[str, Any]:
    """Run one cell and return its JSONL row (see ``run_bench`` for the schema).

    The method gets ``cell.params``, plus the cell's ``seed`` and the run's ``device`` when it
    has such parameters and ``params`` does not set them. Under a generalisation protocol
    (:mod:`fewclip.generalisation`) the cell is run by :mod:`fewclip.bench.generalise`; its
    targets come from ``prepared.targets``.
    """
    from fewclip import methods
    from fewclip.generalisation import GENERALISATION_PROTOCOLS

    source: FeatureSource = prepared.source
    if cell.views is not None:
        source = _ViewLimit(source, cell.views, cell.dataset)  # type: ignore[assignment]
    params = methods.run_params(cell.method, cell.params, seed=cell.seed, device=device)
    meta = _meta(cell, prepared)
    cuda = device.startswith("cuda") and torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rss = _PeakRSS()
    clock = _Clock(cuda)
    if cell.protocol in GENERALISATION_PROTOCOLS:
        from fewclip.bench.generalise import run_generalisation

        out = run_generalisation(
            cell, prepared, source, params, meta, clock, eval_rows=eval_rows, wrap=_ChunkedLogits
        )
    else:
        out = _run_standard(cell, prepared, source, params, meta, clock, eval_rows)
    return _row(cell, prepared, out, clock, rss, device, cuda)


def _meta(cell: Cell, prepared: Prepared) -> dict[str, Any]:
    return {
        "dataset": cell.dataset,
        "backbone": cell.backbone,
        "prompts": cell.prompts,
        "fingerprint": prepared.fingerprint,
    }


class _Clock:
    """Marks of ``time.perf_counter`` at plan, fit and evaluation (CUDA synchronised)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.marks = [time.perf_counter()]

    def mark(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        self.marks.append(time.perf_counter())


@dataclass
class CellOutcome:
    """What a cell's protocol produced, before it becomes a row: the plan, the task and the
    fitted model, the main result (the test split of the classes or dataset fitted on) and
    the protocol's extra row fields."""

    plan: Any
    task: Any
    model: Any
    result: Any
    extra: dict[str, Any] = field(default_factory=dict)


def _run_standard(
    cell: Cell,
    prepared: Prepared,
    source: FeatureSource,
    params: Mapping[str, Any],
    meta: Mapping[str, Any],
    clock: _Clock,
    eval_rows: int | None,
) -> CellOutcome:
    from fewclip import methods

    plan, task = _plan_task(cell, prepared, source, meta)
    model = methods.create(cell.method, **params)
    clock.mark()
    model.fit(task)
    clock.mark()
    result = _evaluate(model, prepared, source, plan, meta, eval_rows)
    clock.mark()
    return CellOutcome(plan, task, model, result)


def _plan_task(
    cell: Cell, prepared: Prepared, source: FeatureSource, meta: Mapping[str, Any]
) -> tuple[Any, Any]:
    """The cell's plan (its draw of support and validation images) and the task built on it."""
    from fewclip import methods

    proto = Protocol(cell.protocol, **dict(cell.protocol_options))
    plan = proto.plan_source(
        source, shots=cell.shots, seed=cell.seed, classnames=list(prepared.classnames)
    )
    if not methods.get(cell.method).uses_validation:
        # the method never reads task.val (a promise the conformance suite checks): the
        # validation features are not loaded, and the row says no validation set was used
        plan = dataclasses.replace(plan, val=None)
    task = build_task(
        plan,
        source,
        classnames=list(prepared.classnames),
        text_weights=prepared.text_weights,
        meta=meta,
        text_tower=prepared.text_tower,
    )
    return plan, task


def _evaluate(
    model: Any,
    prepared: Prepared,
    source: FeatureSource,
    plan: Any,
    meta: Mapping[str, Any],
    eval_rows: int | None,
) -> Any:
    scored = model if eval_rows is None else _ChunkedLogits(model, eval_rows)
    names = prepared.classnames if prepared.class_index is None else prepared.class_index
    return evaluate(
        scored,
        source,
        plan,
        class_index=prepared.class_index,
        n_classes=len(names),
        meta=meta,
    )


# -- cells that differ only in seed -------------------------------------------------------
#: ``run_bench(batch_seeds=...)``: where cells that differ only in seed fit as one model.
BATCH_SEEDS = ("auto", "always", "never")


def seed_batches(
    cells: Sequence[Cell], *, batch_seeds: str = "auto", device: str = "cpu"
) -> list[list[Cell]]:
    """The units ``run_bench`` runs: cells that differ only in ``seed`` (same method, dataset,
    backbone, shots, protocol, parameters, views and prompts) together, when their method
    batches seeds (``Method.batches_seeds``; standard protocols only) and ``batch_seeds`` is
    ``"always"``, or ``"auto"`` and the method says batching is faster on the cells' device
    (``Method._seeds_pay``); every other cell alone. Units come in the order of their first
    cell, cells within a unit in the given order."""
    from fewclip import methods
    from fewclip.generalisation import GENERALISATION_PROTOCOLS

    if batch_seeds not in BATCH_SEEDS:
        raise InvalidValueError(
            f"batch_seeds: expected one of {', '.join(BATCH_SEEDS)}, found {batch_seeds!r}"
        )
    units: dict[str, list[Cell]] = {}
    for cell in cells:
        key = cell.hash
        if batch_seeds != "never" and cell.protocol not in GENERALISATION_PROTOCOLS:
            try:
                cls = methods.get(cell.method)
                params = methods.run_params(cell.method, cell.params, seed=cell.seed, device=device)
                kind = torch.device(str(params.get("device", "cpu"))).type
            except (FewclipError, RuntimeError):  # an unknown method or device fails in its cell
                cls, kind = None, "cpu"
            pays = batch_seeds == "always" or (cls is not None and cls._seeds_pay(kind))
            if cls is not None and cls.batches_seeds and pays:
                key = canonical_json({**cell.to_dict(), "seed": None})
        units.setdefault(key, []).append(cell)
    return list(units.values())


def _run_unit(
    cells: Sequence[Cell],
    prepared: Prepared,
    device: str,
    eval_rows: int | None,
    force: bool = False,
) -> list[tuple[Cell, dict[str, Any] | Exception]]:
    """Each cell's row, or the exception it raised: one cell through :func:`run_cell`, a seed
    batch through :func:`run_seed_batch`."""
    if len(cells) == 1:
        try:
            return [(cells[0], run_cell(cells[0], prepared, device=device, eval_rows=eval_rows))]
        except Exception as e:
            return [(cells[0], e)]
    return run_seed_batch(cells, prepared, device=device, eval_rows=eval_rows, force=force)


def run_seed_batch(
    cells: Sequence[Cell],
    prepared: Prepared,
    *,
    device: str = "cpu",
    eval_rows: int | None = 8192,
    force: bool = False,
) -> list[tuple[Cell, dict[str, Any] | Exception]]:
    """Run cells that differ only in seed, fitting their methods as one batched model
    (:func:`fewclip.methods.fit_seeds`; ``force``: even where the method says batching is
    slower on the device), and return each cell's row or the exception it raised, in the
    order of ``cells``.

    Each cell is planned, its task built and its model evaluated as :func:`run_cell` does; the
    rows equal :func:`run_cell`'s except the timings and memory: ``seeds_batched`` is the
    number of seeds fitted together (1 when :func:`fewclip.methods.seeds_batchable` refuses
    them, and each is then fitted and timed on its own), each row's ``fit_s`` is the batched
    fit's time divided by that number, and ``peak_rss_mib`` is the whole batch's high-water
    mark (``peak_rss_scope`` ``"seeds"``). A cell whose plan fails gets its exception and
    the others go on; a batched fit that fails is every batched cell's exception.
    """
    from fewclip import methods

    out: dict[int, dict[str, Any] | Exception] = {}
    cuda = device.startswith("cuda") and torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rss = _PeakRSS()
    ready: list[_Seed] = []
    for i, cell in enumerate(cells):
        source: FeatureSource = prepared.source
        if cell.views is not None:
            source = _ViewLimit(source, cell.views, cell.dataset)  # type: ignore[assignment]
        t0 = time.perf_counter()
        try:
            params = methods.run_params(cell.method, cell.params, seed=cell.seed, device=device)
            meta = _meta(cell, prepared)
            plan, task = _plan_task(cell, prepared, source, meta)
            model = methods.create(cell.method, **params)
        except Exception as e:
            out[i] = e
            continue
        ready.append(_Seed(i, cell, source, meta, plan, task, model, time.perf_counter() - t0))
    models, tasks = [r.model for r in ready], [r.task for r in ready]
    together = methods.seeds_batchable(models, tasks, force=force)
    if together:
        t0 = _sync_time(cuda)
        try:
            methods.fit_seeds(models, tasks, force=force)
        except Exception as e:
            out.update((r.index, e) for r in ready)
            ready = []
        share = (_sync_time(cuda) - t0) / max(1, len(ready))
        for r in ready:
            r.fit_s = share
    else:
        for r in list(ready):
            t0 = _sync_time(cuda)
            try:
                r.model.fit(r.task)
            except Exception as e:
                out[r.index] = e
                ready.remove(r)
                continue
            r.fit_s = _sync_time(cuda) - t0
    for r in ready:
        t0 = _sync_time(cuda)
        try:
            result = _evaluate(r.model, prepared, r.source, r.plan, r.meta, eval_rows)
        except Exception as e:
            out[r.index] = e
            continue
        clock = _Clock(cuda)
        fitted = r.plan_s + r.fit_s
        clock.marks = [0.0, r.plan_s, fitted, fitted + _sync_time(cuda) - t0]
        outcome = CellOutcome(r.plan, r.task, r.model, result)
        seeds = len(models) if together else 1
        out[r.index] = _row(r.cell, prepared, outcome, clock, rss, device, cuda, seeds=seeds)
    return [(cell, out[i]) for i, cell in enumerate(cells)]


@dataclass
class _Seed:
    """One cell of a seed batch between planning and its row."""

    index: int
    cell: Cell
    source: FeatureSource
    meta: dict[str, Any]
    plan: Any
    task: Any
    model: Any
    plan_s: float
    fit_s: float = 0.0


def _sync_time(cuda: bool) -> float:
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter()


def _row(
    cell: Cell,
    prepared: Prepared,
    out: CellOutcome,
    clock: _Clock,
    rss: _PeakRSS,
    device: str,
    cuda: bool,
    *,
    seeds: int = 1,
) -> dict[str, Any]:
    t0, t1, t2, t3 = clock.marks
    plan, task, model, result = out.plan, out.task, out.model, out.result
    cell_dict = cell.to_dict()
    row = {
        "format": BENCH_FORMAT,
        "hash": cell.hash,
        "cell": cell_dict,
        "method": cell.method,
        "dataset": cell.dataset,
        "backbone": cell.backbone,
        "toy": bool(prepared.toy),
        "backbone_note": prepared.backbone_note,
        "shots": cell.shots,
        "seed": cell.seed,
        "protocol": cell.protocol,
        "leaky": result.leaky,
        "mark": result.mark,
        "accuracy": round(100.0 * result.accuracy, 6),
        "n_test": result.n,
        "n_support": task.support.n,
        "n_val": 0 if task.val is None else task.val.n,
        "val_split": None if plan.val is None else plan.val.split,
        "prompts": str(prepared.meta.get("prompts", cell.prompts)),
        "n_views": task.support.n_views,
        "params": result.params,
        "fitted": _fitted_values(model),
        "dataset_fingerprint": prepared.fingerprint,
        "data": json.loads(canonical_json(dict(prepared.meta))) if prepared.meta else {},
        "versions": versions(),
        "device": device,
        "threads": torch.get_num_threads(),
        "seeds_batched": seeds,
        "plan_s": round(t1 - t0, 4),
        "fit_s": round(t2 - t1, 4),
        "eval_s": round(t3 - t2, 4),
        "wall_s": round(t3 - t0, 4),
        "peak_rss_mib": round(rss.mib(), 1),
        "peak_rss_scope": "seeds" if seeds > 1 and rss.scope == "cell" else rss.scope,
        "cuda_peak_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    for key, value in out.extra.items():  # the protocol's fields, after the main result's
        row[key] = value
    return row


# -- the grid -----------------------------------------------------------------------------
def _say(quiet: bool, msg: str) -> None:
    if not quiet:
        from tqdm.auto import tqdm

        tqdm.write(msg, file=sys.stderr)  # above the progress bar, not through it


@contextlib.contextmanager
def _progress(total: int, enabled: bool) -> Iterator[Any]:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, disable=not enabled, unit="cell", dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()


def run_bench(
    config: BenchConfig,
    prepare: PrepareFn,
    out_jsonl: str | os.PathLike[str],
    *,
    progress: bool = True,
    quiet: bool = False,
    on_error: str = "raise",
    eval_rows: int | None = 8192,
    jobs: int = 1,
    executor: Executor | None = None,
    batch_seeds: str = "auto",
) -> list[dict[str, Any]]:
    """Run every cell of ``config`` not yet in ``out_jsonl``; return the rows of all its cells.

    Args:
        config: the grid.
        prepare: ``prepare(dataset, backbone) -> Prepared``; called lazily, at most once per
            (dataset, backbone), only when that pair still has cells to run, and released
            when its cells are done.
        out_jsonl: the append-only results file (created with its folder if missing). Cells
            whose hash it already holds are skipped; a torn last line (a killed run) is moved
            to ``NAME.torn`` with a warning, so the file stays valid JSONL.
        progress: show a tqdm bar over the cells to run.
        quiet: no bar and no messages (warnings still go through ``warnings``).
        on_error: ``"raise"`` (default) stops at the first failing cell or ``prepare``;
            ``"skip"`` warns, writes nothing for that cell (or for every cell of a dataset whose
            ``prepare`` failed; a later run retries them) and goes on.
        eval_rows: test rows scored per ``logits`` call (``None``: all at once).
        jobs: cells run at once, each in its own worker process with one torch thread (CPU
            only; ``1``: in this process, with its thread setting). ``prepare`` still runs once
            per (dataset, backbone), in this process, and the workers are forked from it after
            that, so they share its result and ``prepare`` needs no pickling; within a dataset
            the cells with the most shots are handed out first, and every finished cell is
            written at once. Needs the ``fork`` start method (Linux, macOS).
        executor: where the cells run (:mod:`fewclip.executors`). ``None`` or a
            :class:`~fewclip.executors.LocalExecutor`: as ``jobs`` says. A
            :class:`~fewclip.executors.RayExecutor`: ``prepare`` runs here, its result is put
            once in Ray's object store, and a pool of Ray actors (one CPU each, or one GPU
            each when the config's device is CUDA) runs the cells; the features a cell reads
            come from ``prepare``'s source (for the CLI, the shared feature store). Only this
            process appends to ``out_jsonl``, so the file has one writer; a cell whose worker
            dies is run again on another actor (at most ``max_retries`` times) and gives one
            row; rows equal a local run's except timings, ``threads``, ``jobs`` and
            ``executor``.
        batch_seeds: ``"auto"`` (default): cells that differ only in seed run together, their
            methods fitted as one batched model (stacked parameters, each seed with its own
            random streams; :func:`seed_batches`, :func:`run_seed_batch`), where the method
            supports it (``Method.batches_seeds``) and says it is faster on the device
            (``Method._seeds_pay``: not on a CPU for the built-in methods); ``"always"``:
            wherever the method supports it; ``"never"``: every cell alone. A batched row
            equals the row of its cell run alone except the timings and memory, and every row
            records ``seeds_batched``. A resumed run batches the seeds still to run.

    Returns:
        One row per cell of ``config`` that has a result, in ``config.cells()`` order
        (rows from earlier runs included; cells skipped by ``on_error="skip"`` missing).

    Each row is one JSON object: ``format``, ``hash`` and ``cell`` (the hashed identity:
    method, dataset, backbone, shots, seed, protocol, protocol_options, params, views,
    prompts), the same keys flat for convenience, ``toy``/``backbone_note`` (``Prepared``'s),
    ``leaky``/``mark`` (``"LEAKY"`` under
    ``oracle-test``), ``accuracy`` (top-1, percent), ``n_test``, ``n_support``, ``n_val``,
    ``val_split`` (0 and None for a method with ``uses_validation = False``: none is loaded),
    ``prompts``, ``n_views``, ``params`` (the method's resolved and selected
    hyper-parameters, ``EvalResult.params``), ``fitted`` (scalar fitted values),
    ``dataset_fingerprint``, ``data`` (``Prepared.meta``), ``versions``, ``device``,
    ``threads``, ``executor`` (``"local"`` or ``"ray"``), ``jobs`` (the run's parallel
    cells: local jobs or Ray actors), ``plan_s``/``fit_s``/``eval_s``/``wall_s`` (seconds),
    ``peak_rss_mib`` with ``peak_rss_scope`` (``"cell"``: high-water mark of this cell;
    ``"process"``: of the whole process so far), ``cuda_peak_mib`` and ``timestamp`` (UTC,
    ISO 8601). Under a generalisation protocol the row adds ``validation`` and the protocol's
    per-split or per-target results (:mod:`fewclip.bench.generalise`), and ``accuracy`` is that
    of the classes the method was fitted on.
    """
    if not isinstance(config, BenchConfig):
        raise InvalidTypeError(f"config: expected a BenchConfig, found {type(config).__name__}")
    if on_error not in ("raise", "skip"):
        raise InvalidValueError(f"on_error: expected 'raise' or 'skip', found {on_error!r}")
    if eval_rows is not None and eval_rows < 1:
        raise InvalidValueError(
            f"eval_rows: expected a positive integer or None, found {eval_rows}"
        )
    if batch_seeds not in BATCH_SEEDS:
        raise InvalidValueError(
            f"batch_seeds: expected one of {', '.join(BATCH_SEEDS)}, found {batch_seeds!r}"
        )
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise InvalidValueError(f"jobs: expected a positive integer, found {jobs!r}")
    if executor is not None and not isinstance(executor, Executor):
        raise InvalidTypeError(
            f"executor: expected a fewclip Executor, found {type(executor).__name__}"
        )
    if isinstance(executor, LocalExecutor):
        if jobs not in (1, executor.jobs):
            raise InvalidValueError(
                f"jobs={jobs} and executor=LocalExecutor({executor.jobs}): give the jobs once"
            )
        jobs, executor = executor.jobs, None
    ray_executor = executor if isinstance(executor, RayExecutor) else None
    if ray_executor is not None and jobs != 1:
        raise InvalidValueError(
            f"jobs={jobs}: the Ray executor runs cells on its workers; set their number with "
            "RayExecutor(workers=...) (--workers)"
        )
    if jobs > 1 and config.device != "cpu":
        raise InvalidValueError(
            f"jobs={jobs}: parallel cells run in CPU worker processes, but the config's device "
            f"is {config.device!r}; use jobs=1 on an accelerator"
        )
    if jobs > 1 and "fork" not in multiprocessing.get_all_start_methods():
        raise BenchError(f"jobs={jobs} needs the 'fork' start method, not available here")
    path = Path(out_jsonl)
    cells = list(config.cells())
    writer = _Appender(path)  # lock first, then read: no other run can add rows meanwhile
    try:
        existing = read_rows(path) if path.stat().st_size else []
        done: dict[str, dict[str, Any]] = {}
        for row in existing:
            h = row.get("hash")
            if isinstance(h, str) and h not in done:
                done[h] = row
        todo = [c for c in cells if c.hash not in done]
        n_done = len(cells) - len(todo)
        if n_done:
            _say(quiet, f"{path}: {n_done} of {len(cells)} cells already done, skipping them")
        groups: dict[tuple[str, str], list[Cell]] = {}
        for c in todo:  # cells() order keeps each (dataset, backbone) contiguous
            groups.setdefault((c.dataset, c.backbone), []).append(c)
        failures: list[tuple[Cell, BaseException]] = []
        with _progress(len(todo), progress and not quiet) as bar:
            for (dataset, backbone), group in groups.items():
                try:
                    prepared = _prepare(prepare, group[0], done.values(), quiet)
                    prepared = _with_targets(prepare, prepared, group[0], quiet)
                except Exception as e:
                    if on_error == "raise":
                        raise
                    warnings.warn(
                        f"prepare({dataset!r}, {backbone!r}) failed ({type(e).__name__}: {e}); "
                        f"its {len(group)} cell(s) are not run, a later run retries them",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    failures += [(c, e) for c in group]
                    bar.update(len(group))
                    continue
                units = seed_batches(group, batch_seeds=batch_seeds, device=config.device)
                force = batch_seeds == "always"
                if ray_executor is not None:
                    outcomes = _ray_outcomes(
                        units, prepared, config.device, eval_rows, ray_executor, force
                    )
                elif jobs == 1:
                    outcomes = _serial_outcomes(
                        units, prepared, config.device, eval_rows, bar, force
                    )
                else:
                    outcomes = _parallel_outcomes(
                        units, prepared, config.device, eval_rows, jobs, force
                    )
                # closing: an error to raise or Ctrl-C stops the workers at once
                with contextlib.closing(outcomes):
                    for cell, outcome in outcomes:
                        if isinstance(outcome, BaseException):
                            if on_error == "raise":
                                raise outcome
                            failures.append((cell, outcome))
                            warnings.warn(
                                f"cell {cell.method} on {cell.dataset}/{cell.backbone} "
                                f"K={cell.shots} seed={cell.seed} failed "
                                f"({type(outcome).__name__}: {outcome}); "
                                "not recorded, a later run retries it",
                                RuntimeWarning,
                                stacklevel=2,
                            )
                        else:
                            outcome["executor"] = "ray" if ray_executor else "local"
                            outcome["jobs"] = (
                                _ray_pool_size(ray_executor, len(units), config.device)
                                if ray_executor
                                else jobs
                            )
                            writer.append(outcome)
                            done[cell.hash] = outcome
                        if jobs > 1 or ray_executor is not None:
                            bar.set_postfix_str(
                                f"{cell.dataset}/{cell.backbone} {cell.method} K={cell.shots} "
                                f"seed={cell.seed} done",
                                refresh=False,
                            )
                        bar.update(1)
                del prepared  # release this dataset's features before the next one
        ran = len(todo) - len(failures)
        _say(
            quiet,
            f"{path}: ran {ran} cells, skipped {n_done} already done"
            + (f", {len(failures)} failed (not recorded)" if failures else ""),
        )
    finally:
        writer.close()
    return [done[c.hash] for c in cells if c.hash in done]


def _serial_outcomes(
    units: Sequence[Sequence[Cell]],
    prepared: Prepared,
    device: str,
    eval_rows: int | None,
    bar: Any,
    force: bool = False,
) -> _Outcomes:
    """Each cell's row, or the exception it raised, running unit by unit in this process."""
    for unit in units:
        cell = unit[0]
        seeds = ",".join(str(c.seed) for c in unit)
        bar.set_postfix_str(
            f"{cell.dataset}/{cell.backbone} {cell.method} K={cell.shots} seed={seeds}",
            refresh=True,
        )
        yield from _run_unit(unit, prepared, device, eval_rows, force)


#: What forked workers read: (units, prepared, device, eval_rows, force), set only while a
#: pool runs.
_FORKED: tuple[Sequence[Sequence[Cell]], Prepared, str, int | None, bool] | None = None


def _init_worker(parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    torch.set_num_threads(1)
    _die_with_parent(parent)


def _die_with_parent(parent: int) -> None:
    """End this worker when the bench process dies, even by SIGKILL (which runs no cleanup):
    Linux's ``PR_SET_PDEATHSIG``; an orphaned worker would otherwise run its cell on, holding
    memory and the caller's output pipes, for nothing (its row can no longer be written)."""
    if sys.platform == "linux":
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            pr_set_pdeathsig = 1
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL))
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)


def _run_forked_unit(i: int) -> tuple[int, list[tuple[int, dict[str, Any] | Exception]]]:
    assert _FORKED is not None, "a bench worker was started outside run_bench"
    units, prepared, device, eval_rows, force = _FORKED
    out: list[tuple[int, dict[str, Any] | Exception]] = []
    for j, (_, outcome) in enumerate(_run_unit(units[i], prepared, device, eval_rows, force)):
        if isinstance(outcome, Exception):
            try:  # the exception travels back pickled; some cannot be rebuilt on the other side
                pickle.loads(pickle.dumps(outcome))
            except Exception:
                outcome = RuntimeError(f"{type(outcome).__name__}: {outcome}")
        out.append((j, outcome))
    return i, out


def _longest_first(units: Sequence[Sequence[Cell]]) -> list[int]:
    """Unit indices by decreasing shots, then decreasing seeds fitted together (stable): the
    longest work first keeps the workers evenly loaded."""
    return sorted(range(len(units)), key=lambda i: (-units[i][0].shots, -len(units[i])))


def _parallel_outcomes(
    units: Sequence[Sequence[Cell]],
    prepared: Prepared,
    device: str,
    eval_rows: int | None,
    jobs: int,
    force: bool = False,
) -> _Outcomes:
    """Each cell's row, or its exception, from ``jobs`` forked workers that each run a unit
    (one cell or a seed batch), in completion order.

    The units with the most shots go first (longest first keeps the workers evenly loaded).
    If the generator is closed early (an error to raise, Ctrl-C), unstarted units are dropped
    and the workers are killed.
    """
    global _FORKED
    order = _longest_first(units)
    _FORKED = (units, prepared, device, eval_rows, force)
    pool = ProcessPoolExecutor(
        max_workers=min(jobs, len(units)),
        mp_context=multiprocessing.get_context("fork"),
        initializer=_init_worker,
        initargs=(os.getpid(),),
    )
    clean = False
    try:
        futures = [pool.submit(_run_forked_unit, i) for i in order]
        for future in as_completed(futures):
            try:
                i, outcomes = future.result()
            except BrokenProcessPool as e:
                raise BenchError(
                    f"a bench worker process died ({e}); the cells it was running are not "
                    "recorded (out of memory? try fewer jobs); a later run retries them"
                ) from None
            for j, outcome in outcomes:
                yield units[i][j], outcome
        clean = True
    finally:
        if not clean:
            for p in list(getattr(pool, "_processes", {}).values()):
                p.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        _FORKED = None


_RayPayload = tuple[Sequence[Sequence[Cell]], Prepared, str, "int | None", bool]


def _ray_setup(payload: _RayPayload) -> Any:
    return payload


def _ray_run_unit(payload: _RayPayload, i: int) -> Any:
    units, prepared, device, eval_rows, force = payload
    return [outcome for _, outcome in _run_unit(units[i], prepared, device, eval_rows, force)]


def _gpus_per_worker(device: str) -> float:
    return 1.0 if device.startswith("cuda") else 0.0


def _ray_pool_size(executor: RayExecutor, n_cells: int, device: str) -> int:
    return executor.pool_size(n_cells, gpus_per_worker=_gpus_per_worker(device))


def _ray_outcomes(
    units: Sequence[Sequence[Cell]],
    prepared: Prepared,
    device: str,
    eval_rows: int | None,
    executor: RayExecutor,
    force: bool = False,
) -> _Outcomes:
    """Each cell's row, or its exception, from a pool of Ray actors that each run a unit (one
    cell or a seed batch), in completion order (most shots first, as with local jobs). A
    cell's exception comes back as its outcome; a worker's death makes the executor run the
    unit again elsewhere."""
    order = _longest_first(units)
    results = executor.map(
        _ray_setup,
        (units, prepared, device, eval_rows, force),
        _ray_run_unit,
        order,
        gpus_per_worker=_gpus_per_worker(device),
    )
    with contextlib.closing(results):
        for k, outcomes in results:
            unit = units[order[k]]
            if isinstance(outcomes, BaseException):
                for cell in unit:
                    yield cell, outcomes
                continue
            for cell, outcome in zip(unit, outcomes, strict=True):
                yield cell, outcome


def completed_rows(config: BenchConfig, out_jsonl: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of ``config``'s cells already in ``out_jsonl``, in ``config.cells()`` order
    (what ``run_bench`` would return without running anything; for reports of a partial run).
    A missing file gives ``[]``."""
    path = Path(out_jsonl)
    if not path.exists():
        return []
    by_hash: dict[str, dict[str, Any]] = {}
    for row in read_rows(path):
        h = row.get("hash")
        if isinstance(h, str):
            by_hash.setdefault(h, row)
    return [by_hash[c.hash] for c in config.cells() if c.hash in by_hash]


def _with_targets(prepare: PrepareFn, prepared: Prepared, cell: Cell, quiet: bool) -> Prepared:
    """``prepared`` with the cell's transfer targets prepared (``Prepared.targets``): under
    ``cross-dataset`` and ``domain-generalisation``, each of ``protocol_options.targets`` on
    the cell's backbone, once per (source, backbone)."""
    names = list(cell.protocol_options.get("targets", []) or [])
    if not names:
        return prepared
    targets: dict[str, Prepared] = {}
    for name in names:
        _say(quiet, f"preparing target {name} / {cell.backbone}")
        t = prepare(name, cell.backbone)
        if not isinstance(t, Prepared):
            raise BenchError(
                f"prepare({name!r}, {cell.backbone!r}) returned {type(t).__name__}; "
                "expected fewclip.bench.Prepared"
            )
        if len(t.classnames) != int(t.text_weights.shape[0]):
            raise BenchError(
                f"prepare({name!r}, {cell.backbone!r}): {len(t.classnames)} classnames but "
                f"text_weights has shape {tuple(t.text_weights.shape)}"
            )
        targets[name] = t
    return dataclasses.replace(prepared, targets=targets)


def _prepare(prepare: PrepareFn, cell: Cell, rows: Any, quiet: bool) -> Prepared:
    _say(quiet, f"preparing {cell.dataset} / {cell.backbone}")
    p = prepare(cell.dataset, cell.backbone)
    if not isinstance(p, Prepared):
        raise BenchError(
            f"prepare({cell.dataset!r}, {cell.backbone!r}) returned {type(p).__name__}; "
            "expected fewclip.bench.Prepared"
        )
    if len(p.classnames) != int(p.text_weights.shape[0]):
        raise BenchError(
            f"prepare({cell.dataset!r}, {cell.backbone!r}): {len(p.classnames)} classnames but "
            f"text_weights has shape {tuple(p.text_weights.shape)}"
        )
    if p.fingerprint is not None:
        seen = {
            r.get("dataset_fingerprint")
            for r in rows
            if r.get("dataset") == cell.dataset
            and r.get("backbone") == cell.backbone
            and r.get("dataset_fingerprint") is not None
        }
        other = sorted(str(s) for s in seen - {p.fingerprint})
        if other:
            warnings.warn(
                f"{cell.dataset}/{cell.backbone}: the data fingerprint is now {p.fingerprint!r} "
                f"but earlier rows in this file have {', '.join(other)}; their results come "
                "from different features (use a new output file to keep them apart)",
                RuntimeWarning,
                stacklevel=3,
            )
    return p
