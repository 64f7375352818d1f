"""Benchmark runner: a grid of methods × datasets × shots × seeds × backbones, run cell by cell
into a resumable JSONL file, summarised as mean ± std tables and accuracy-vs-shots plots.

>>> from fewclip.bench import load_config, run_bench, summarize, format_tables
>>> cfg = load_config("smoke", ["shots=1,2"])                  # doctest: +SKIP
>>> rows = run_bench(cfg, prepare, "runs/smoke.jsonl")         # doctest: +SKIP
>>> print(format_tables(summarize(rows, methods=cfg.methods)))  # doctest: +SKIP

``prepare(dataset, backbone) -> Prepared`` supplies features, class names and text weights;
``fewclip.bench.synthetic.synthetic_prepare`` builds one on synthetic CLIP-like worlds.
Plots (``fewclip.bench.plots``) need the ``plot`` extra: ``pip install 'fewclip[plot]'``.
"""

from fewclip.bench.config import (
    BENCH_FORMAT,
    DEFAULT_METHODS,
    BenchConfig,
    Cell,
    ConfigError,
    apply_overrides,
    canonical_json,
    cell_hash,
    load_config,
    presets,
)
from fewclip.bench.results import (
    LEAKY_MARK,
    Summary,
    format_table,
    format_tables,
    read_rows,
    summarize,
    summary_json,
    write_atomic,
    write_reports,
)
from fewclip.bench.runner import (
    BenchError,
    Prepared,
    completed_rows,
    run_bench,
    run_cell,
    versions,
)

__all__ = [
    "BENCH_FORMAT",
    "DEFAULT_METHODS",
    "LEAKY_MARK",
    "BenchConfig",
    "BenchError",
    "Cell",
    "ConfigError",
    "Prepared",
    "Summary",
    "apply_overrides",
    "canonical_json",
    "cell_hash",
    "completed_rows",
    "format_table",
    "format_tables",
    "load_config",
    "presets",
    "read_rows",
    "run_bench",
    "run_cell",
    "summarize",
    "summary_json",
    "versions",
    "write_atomic",
    "write_reports",
]
