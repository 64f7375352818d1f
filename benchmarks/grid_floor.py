"""The floor of the papers' grid: the work its cells cannot avoid, on this machine, now.

    python -m benchmarks.grid_floor [--methods zero-shot,clip-adapter,...] [--threads 1]
                                    [--datasets imagenet,dtd] [--jobs 2]

For every cell of ``benchmarks/bench_speed.py``'s grid (the ``tip-adapter`` bench preset: 11
datasets at their real sizes, 1/2/4/8/16 shots, seeds 1-3, 10 views, D = 1024, a few-shot
validation set of min(K, 4) images a class, the whole test split), the method is built with
the cell's hyper-parameters (not fitted) and ``benchmarks/_floors.py`` derives the work of its
fit and test scoring at the cell's shape. That work is timed at the GEMM and elementwise rates
measured in this process with ``--threads`` torch threads (the FLOP floor of ``_floors``; each
grid cell runs on one thread under ``--jobs``). The table gives each method's floor in minutes
of one core, and the grid's floor in wall-clock minutes on ``--jobs`` perfectly used cores,
to set beside ``bench_speed``'s measured times.

The linear probe is left out: its work is its L-BFGS evaluations, which depend on the data
and are known only after fitting (``method_speed`` counts them while it fits). Feature
generation and the reports are not counted either, so the grid's floor is a lower bound.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks._floors import FLOORS, Rates, Shape
from benchmarks._util import table
from benchmarks.bench_speed import PRESET_NAME
from fewclip import methods as registry
from fewclip.bench.config import load_config
from fewclip.testing.synthetic import PRESETS

VIEWS, DIM, VAL_SHOTS = 10, 1024, 4


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--methods", default=None, help="default: the preset's, less linear-probe")
    ap.add_argument("--datasets", default=None, help="default: the preset's 11")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of one cell")
    ap.add_argument("--jobs", type=int, default=2, help="cells at once (cores)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config("tip-adapter")
    names = (
        args.methods.split(",") if args.methods else [m for m in cfg.methods if m != "linear-probe"]
    )
    missing = sorted(set(names) - set(FLOORS))
    if missing:
        raise SystemExit(f"--methods: no floor for {missing} (benchmarks/_floors.py)")
    datasets = args.datasets.split(",") if args.datasets else list(cfg.datasets)
    rates = Rates()
    floor = dict.fromkeys(names, 0.0)
    imagenet16 = dict.fromkeys(names, 0.0)
    cells = dict.fromkeys(names, 0)
    for cell in cfg.cells():
        if cell.method not in floor or cell.dataset not in datasets:
            continue
        size = PRESETS[PRESET_NAME.get(cell.dataset, cell.dataset)]
        shape = Shape(
            c=size.classes,
            n=size.classes * cell.shots,
            v=VIEWS,
            d=DIM,
            nv=size.classes * min(cell.shots, VAL_SHOTS),
            nt=size.test,
        )
        method = registry.create(cell.method, **cell.params)
        fit, predict = FLOORS[cell.method](method, shape, {})
        seconds = rates.flop_floor(fit) + rates.flop_floor(predict)
        floor[cell.method] += seconds
        cells[cell.method] += 1
        if cell.dataset == "imagenet" and cell.shots == 16:
            imagenet16[cell.method] = seconds  # the same for every seed
    rows = [[m, str(cells[m]), f"{floor[m] / 60:.1f}", f"{imagenet16[m]:.0f}"] for m in names]
    total = sum(floor.values())
    rows.append(["all", str(sum(cells.values())), f"{total / 60:.1f}", ""])
    print(
        f"GEMM {rates.gemm['float32'] / 1e9:.0f} GFLOP/s (float32), elementwise "
        f"{rates.elem / 1e9:.2f} G/s, {torch.get_num_threads()} torch thread(s)"
    )
    print(table(["method", "cells", "floor (core-min)", "ImageNet 16-shot cell floor (s)"], rows))
    print(
        f"\nThe grid's floor without the linear probe: {total / 60 / args.jobs:.1f} min of "
        f"wall-clock time on {args.jobs} perfectly used cores."
    )


if __name__ == "__main__":
    main()
