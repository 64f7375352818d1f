"""The whole few-shot benchmark grid through ``fewclip.bench.run_bench`` on synthetic features.

    python -m benchmarks.bench_speed [--methods all] [--datasets imagenet,dtd] [--shots 1,16]
                                     [--seeds 1,2,3] [--threads 1] [--jobs 2]
                                     [--batch-seeds auto|always|never]
                                     [--out /tmp/fewclip-bench-speed/results.jsonl]

Grid (defaults): the 11 few-shot benchmarks with their real class counts and train/val/test
sizes (``fewclip.testing.PRESETS``: ImageNet 1000 classes, 1.28M train, 50k test), D = 1024,
10 augmented views per training image; methods zero-shot, linear-probe, clip-adapter,
tip-adapter, tip-adapter-f with the hyper-parameters of the ``tip-adapter`` bench preset (the
reference configs: defaults, Tip's per-dataset search ranges and init α, Tip-F's 100 EuroSAT
epochs, CLIP-Adapter's 50 ImageNet epochs, TaskRes's ImageNet lr); 1/2/4/8/16 shots; seeds 1-3;
protocol fewshot-val. Features are synthetic: each dataset's calibrated preset
(``SyntheticWorld.from_preset``, through ``synthetic_prepare``; its zero-shot and 16-shot
Tip-Adapter accuracies are RN50's published ones, the rest is free; docs/benchmarks.md),
generated lazily, only for the rows a plan asks for, so the grid measures the methods, the
search and the protocol, not the image encoder.

``--batch-seeds always`` fits the cells that differ only in seed as one batched model wherever
the method can (``auto``, the default: where the method says it is faster, which is not on a
CPU; ``never``: every cell alone); each row records ``seeds_batched`` and its share of the
batched fit's time.

``--jobs N`` runs N cells at once, each in a worker process with one torch thread
(``run_bench(jobs=N)``): on an N-core machine the whole grid in one command.

Resumable: rerunning with the same ``--out`` skips finished cells and reports the timings
recorded in the file (``--fresh`` starts over). Prints the time per method (total, per cell,
per ImageNet 16-shot cell), the whole grid's time and the peak memory; writes results.md,
results.txt, results.summary.json and an accuracy-vs-shots plot next to ``--out``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks._util import peak_rss_gib, table
from fewclip import methods as registry
from fewclip.bench import (
    DEFAULT_METHODS,
    BenchConfig,
    Prepared,
    completed_rows,
    format_table,
    run_bench,
    summarize,
    write_reports,
)
from fewclip.bench.config import load_config
from fewclip.bench.results import Summary
from fewclip.bench.synthetic import synthetic_prepare
from fewclip.testing.synthetic import PRESETS

#: Benchmark names of the ``tip-adapter`` preset → ``PRESETS`` names.
PRESET_NAME = {"fgvc_aircraft": "fgvc"}


def _csv(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def _ints(option: str, text: str) -> list[int]:
    try:
        return [int(s) for s in _csv(text)]
    except ValueError:
        raise SystemExit(f"{option}: expected comma-separated integers, found {text!r}") from None


def _fmt_s(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.2f} h"
    if s >= 60:
        return f"{s / 60:.1f} min"
    return f"{s:.2f} s"


def timing_table(rows: list[dict[str, Any]], methods: list[str]) -> str:
    """Per method: cells, fit+eval seconds (total, per cell, per ImageNet 16-shot cell), the
    seconds spent planning and loading (generating) features, the largest per-cell peak RSS."""
    out = []
    for m in methods:
        mine = [r for r in rows if r["method"] == m]
        if not mine:
            out.append([m, "0", "–", "–", "–", "–", "–"])
            continue
        work = [r["fit_s"] + r["eval_s"] for r in mine]
        inet = [
            r["fit_s"] + r["eval_s"]
            for r in mine
            if r["dataset"] == "imagenet" and r["shots"] == 16
        ]
        out.append(
            [
                m,
                str(len(mine)),
                _fmt_s(sum(work)),
                _fmt_s(sum(work) / len(mine)),
                _fmt_s(statistics.fmean(inet)) if inet else "–",
                _fmt_s(sum(r["plan_s"] for r in mine)),
                f"{max(r['peak_rss_mib'] for r in mine) / 1024:.2f} GiB",
            ]
        )
    out.append(
        [
            "all",
            str(len(rows)),
            _fmt_s(sum(r["fit_s"] + r["eval_s"] for r in rows)),
            "",
            "",
            _fmt_s(sum(r["plan_s"] for r in rows)),
            "",
        ]
    )
    return table(
        [
            "method",
            "cells",
            "fit + eval",
            "per cell",
            "ImageNet 16-shot cell",
            "plan + features",
            "peak RSS (cell)",
        ],
        out,
    )


def _average_only(summary: Summary) -> str:
    out = []
    for g in summary.groups:
        avg = g.average
        if avg is None or not avg.datasets:
            continue
        out.append(avg.title + (f" (left out: {', '.join(avg.excluded)})" if avg.excluded else ""))
        out.append(format_table(avg, "text"))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help="comma-separated registered names, or 'all'",
    )
    ap.add_argument("--datasets", default=",".join(PRESETS), help="comma-separated PRESETS names")
    ap.add_argument("--shots", default="1,2,4,8,16")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--views", type=int, default=10)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--protocol", default="fewshot-val")
    ap.add_argument("--out", type=Path, default=Path("/tmp/fewclip-bench-speed/results.jsonl"))
    ap.add_argument("--fresh", action="store_true", help="delete --out first")
    ap.add_argument(
        "--no-calibrate",
        action="store_true",
        help="isotropic uncalibrated worlds instead of the calibrated presets",
    )
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: report the cells of this grid already in --out",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's choice; 1 is faster on a busy machine)",
    )
    ap.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="cells run at once in worker processes with one torch thread each (e.g. the "
        "number of cores); --threads then applies to this process only",
    )
    ap.add_argument(
        "--batch-seeds",
        choices=("auto", "always", "never"),
        default="auto",
        help="cells that differ only in seed fitted as one batched model: where the method says "
        "it is faster (auto: not on a CPU), wherever it can (always) or never "
        "(run_bench(batch_seeds=...))",
    )
    args = ap.parse_args(argv)
    if args.jobs < 1:
        raise SystemExit(f"--jobs: expected a positive integer, found {args.jobs}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    if args.methods.strip() == "all":  # synthetic features have no text encoder for CoOp
        method_list = [m for m in registry.available() if not registry.get(m).needs_text_tower]
    else:
        method_list = _csv(args.methods)
    preset = load_config("tip-adapter")
    config = BenchConfig(
        methods=tuple(method_list),
        params={m: p for m, p in preset.params.items() if m in method_list},
        dataset_params={
            PRESET_NAME.get(d, d): {m: p for m, p in per.items() if m in method_list}
            for d, per in preset.dataset_params.items()
        },
        datasets=tuple(_csv(args.datasets)),
        shots=tuple(_ints("--shots", args.shots)),
        seeds=tuple(_ints("--seeds", args.seeds)),
        backbones=("RN50",),
        protocol=args.protocol,
        views=args.views,
    )
    unknown = [d for d in config.datasets if d not in PRESETS]
    if unknown:
        raise SystemExit(f"--datasets: unknown {unknown}; known: {', '.join(PRESETS)}")
    if args.fresh and args.out.exists():
        args.out.unlink()

    base = synthetic_prepare(dim=args.dim, n_views=args.views, calibrate=not args.no_calibrate)
    prepare_s: dict[str, float] = {}

    def prepare(dataset: str, backbone: str) -> Prepared:
        t0 = time.perf_counter()
        p = base(dataset, backbone)
        prepare_s[dataset] = time.perf_counter() - t0
        return p

    print(
        f"grid: {len(config.methods)} methods x {len(config.datasets)} datasets x "
        f"{len(config.shots)} shots x {len(config.seeds)} seeds = {config.n_cells} cells; "
        f"protocol {config.protocol}; D={args.dim}, {args.views} views; synthetic features "
        f"({'isotropic, uncalibrated' if args.no_calibrate else 'calibrated presets'}); "
        + (
            f"{args.jobs} worker processes with 1 torch thread each"
            if args.jobs > 1
            else f"{torch.get_num_threads()} torch threads"
        ),
        flush=True,
    )
    t0 = time.perf_counter()
    if args.report_only:
        rows = completed_rows(config, args.out)
    else:
        rows = run_bench(
            config,
            prepare,
            args.out,
            quiet=args.quiet,
            on_error="skip",
            jobs=args.jobs,
            batch_seeds=args.batch_seeds,
        )
    elapsed = time.perf_counter() - t0

    print()
    print(timing_table(rows, list(config.methods)))
    cell_total = sum(r["wall_s"] for r in rows)
    prep_total = sum(prepare_s.values())
    print(
        f"\nwhole grid: {_fmt_s(cell_total)} in cells (sum of recorded per-cell wall times, "
        f"{len(rows)} of {config.n_cells} cells)"
        + (f" + {_fmt_s(prep_total)} building synthetic worlds this run" if prep_total else "")
        + f"; this invocation took {_fmt_s(elapsed)}"
    )
    print(f"peak RSS of this process (getrusage): {peak_rss_gib():.2f} GiB")
    missing = config.n_cells - len(rows)
    if missing:
        print(
            f"{missing} cell(s) have no result (not run yet, or failed: see the warnings)",
            file=sys.stderr,
        )

    summary = summarize(rows, methods=list(config.methods), datasets=list(config.datasets))
    print()
    print(_average_only(summary))
    out_dir = args.out.parent
    written = write_reports(summary, out_dir, stem=args.out.stem)
    try:
        from fewclip.bench.plots import plot_summary

        written += plot_summary(summary, out_dir / args.out.stem, methods=list(config.methods))
    except ImportError as e:
        print(f"(no plot: {e})")
    print("wrote " + ", ".join(str(p) for p in written))


if __name__ == "__main__":
    main()
