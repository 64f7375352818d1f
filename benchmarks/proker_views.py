"""ProKeR's exact dense solvers on the reference 10-view setting: eigh per β, Cholesky per (β, λ).

    python -m benchmarks.proker_views [--views 10] [--solvers cholesky,eigh] [--betas 10]
                                      [--threads 2] [--max-kernel-gib 3]

Shape: C = 100 classes, K = 16 shots, D = 1024, every one of the V augmented views a kernel row
(``rows="views"``: M = C·K·V = 16,000 rows for V = 10, as the released ``main.py``), the
few-shot validation set of 4 images a class (400 rows), the default 10 λ and the first
``--betas`` β of the default grid (all 10 by default); synthetic CLIP-like features
(``SyntheticWorld``), float32, CPU. ``--views 1,4,10`` runs several row counts in one command.

For each solver the whole ``fit`` is timed: the search and the final coefficients. ``per β`` is
that time over the number of β, ``10 β`` the same time scaled to the default grid's 10 β (the
Cholesky fit's one extra factorisation after the search is counted once per β there, so its
figure is a slight overestimate when ``--betas`` is small). ``vs cholesky`` is against the
Cholesky fit of the same run, the solver ProKeR used before ``solver="eigh"``. Each fit runs
in a fresh process: ``+GiB`` is its peak resident memory during the fit (Linux ``VmHWM``,
reset before the fit) above its resident memory before it, also in M² float32 numbers;
``peak GiB`` is the process's whole peak, features included. ``Δ logits`` is the largest
difference from the Cholesky fit's logits on the validation set and 2,000 test images;
``same point`` says whether the chosen (β, λ) agree.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import time
import warnings
from concurrent.futures import ProcessPoolExecutor

import torch

from benchmarks._util import table
from fewclip import methods
from fewclip.testing import SyntheticWorld

DEFAULT_BETAS = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0)
WORLD = {"sep": 0.2, "spread": 0.035}


def _status_gib(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 2**20  # kB
    raise KeyError(key)


def _world(args: argparse.Namespace) -> SyntheticWorld:
    return SyntheticWorld(args.classes, args.dim, seed=0, **WORLD)


def _fit_one(args: argparse.Namespace, views: int, solver: str) -> dict:
    """One fit in a fresh process: its time, its peak memory above the memory before it."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    world = _world(args)
    task = world.task(args.shots, seed=1, views=views)
    assert task.val is not None
    x = torch.cat([task.val.features, world.test_set().features[:2000]])
    pk = methods.create(
        "proker",
        betas=DEFAULT_BETAS[: args.betas],
        rows="views",
        solver=solver,
        max_kernel_bytes=int(args.max_kernel_gib * 2**30),
    )
    warm = torch.eye(64) + 0.1  # load LAPACK's kernels before the clock starts
    torch.linalg.eigh(warm), torch.linalg.cholesky(warm), warm @ warm
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak resident memory (VmHWM) to the current one
    before, load = _status_gib("VmRSS"), os.getloadavg()[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the slow-CPU warning over 8,192 rows
        t0 = time.perf_counter()
        pk.fit(task)
        fit_s = time.perf_counter() - t0
    return {
        "fit_s": fit_s,
        "extra_gib": _status_gib("VmHWM") - before,
        "peak_gib": _status_gib("VmHWM"),
        "load": load,
        "solver_": pk.solver_,
        "point": (pk.beta_, pk.lam_),
        "val": pk.val_accuracy_,
        "logits": pk.logits(x),
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--views", default="10", help="comma-separated view counts V (M = 1600·V)")
    ap.add_argument("--solvers", default="cholesky,eigh", help="cholesky, eigh, auto, cg")
    ap.add_argument("--betas", type=int, default=10, help="the first N β of the default grid")
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--max-kernel-gib", type=float, default=3.0, help="max_kernel_bytes, GiB")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = ap.parse_args(argv)
    solvers = args.solvers.split(",")
    if "cholesky" not in solvers:
        solvers = ["cholesky", *solvers]  # the baseline
    n_betas = len(DEFAULT_BETAS[: args.betas])
    spawn = multiprocessing.get_context("spawn")

    out = []
    for views in [int(v) for v in args.views.split(",")]:
        m = args.classes * args.shots * views
        print(
            f"{args.classes} classes x {args.shots} shots x {views} views = {m} kernel rows, "
            f"D={args.dim}, val {args.classes * min(args.shots, 4)}, {n_betas} beta x 10 lambda",
            flush=True,
        )
        base: dict | None = None
        for solver in solvers:
            with ProcessPoolExecutor(1, mp_context=spawn) as pool:
                r = pool.submit(_fit_one, args, views, solver).result()
            if base is None:
                base = r
            delta = float((r["logits"] - base["logits"]).abs().max())
            print(
                f"  {solver} -> {r['solver_']}: fit {r['fit_s']:.1f} s, (beta, lam) {r['point']}, "
                f"val {r['val']:.2f}%, +{r['extra_gib']:.2f} GiB, {r['threads']} threads "
                f"(load {r['load']:.1f})",
                flush=True,
            )
            out.append(
                [
                    str(m),
                    f"{solver} → {r['solver_']}",
                    f"{r['fit_s']:.1f}",
                    f"{r['fit_s'] / n_betas:.1f}",
                    f"{r['fit_s'] / n_betas * len(DEFAULT_BETAS):.0f}",
                    f"{r['fit_s'] / base['fit_s']:.2f}",
                    f"{r['extra_gib']:.2f}",
                    f"{r['extra_gib'] * 2**30 / (4 * m * m):.1f}",
                    f"{r['peak_gib']:.2f}",
                    f"({r['point'][0]}, {r['point'][1]})",
                    f"{r['val']:.2f}",
                    "yes" if r["point"] == base["point"] else "**no**",
                    f"{delta:.1e}",
                ]
            )
    header = ["M", "solver", "fit s", "per β s", "10 β s", "vs cholesky", "+GiB", "+M²", "peak GiB"]
    print()
    print(table([*header, "(β, λ)", "val %", "same point", "Δ logits"], out))


if __name__ == "__main__":
    main()
