"""Every feature-level method on one cell: fit and predict times against the floor of their work.

    python -m benchmarks.method_speed [--shape reference] [--methods all] [--threads 2]
                                      [--proker-rows features]

Shapes (synthetic features from a calibrated ``SyntheticWorld`` preset, float32, CPU):

- ``reference`` (default): C = 100 classes × K = 16 shots (1,600 support images) with 10
  stored augmented views, D = 1024, a few-shot validation set of 4 images per class (400
  rows) and 5,000 test rows: the shape of the released codes' 100-class datasets (the
  calibrated Caltech101 preset). Hyper-parameters: each method's defaults (its reference
  schedule: CLIP-Adapter 200 epochs of batch 32, TaskRes 200 epochs of batch 256, ...) with
  the Caltech101 entries of the ``tip-adapter`` bench preset (Tip's search ranges). ProKeR's
  rows are ``--proker-rows`` (default ``features``, M = 1,600 kernel rows; ``views`` is the
  released ``main.py``'s M = 16,000, whose 100 factorisations take about half an hour).
- ``imagenet``: 1,000 classes × 16 shots, 10 views, D = 1024, 4,000 validation rows and the
  50,000-image test set, with the ImageNet entries of the preset (issue #6's cell; its targets:
  a training-free method ≤ 10 s, a trained one ≤ 5 min).

For every method the fit and the test scoring are timed, and the work the method cannot avoid
(``benchmarks/_floors.py``: one function per method deriving its products, factorisations and
elementwise passes from its definition and reference schedule) is turned into two floors,
measured right after the method in the same process and with the same threads:

- ``FLOP floor``: the work's FLOPs at the best float32/float64 GEMM throughput of the moment
  (printed as ``GF/s``), plus its elementwise passes at the measured in-cache elementwise rate;
- ``shape floor``: each product timed at its own shape in a tight loop of bare ``torch.mm``
  calls, and each optimiser update as torch's fused kernel over as many parameters, times how
  often the method needs it (for a schedule of small steps, e.g. batch 32, this is the latency
  floor of the same number of bare matmul-and-backward steps and updates).

``floor`` is the larger of the two, ``ratio`` = time / floor (fit, predict and the whole cell),
and ``bound`` names the shape floor's largest term (products, factorisations, elementwise
passes or optimiser updates; "latency" for a schedule of at least 1,000 steps whose products
and updates at their real sizes take over 1.5 times their FLOPs at the peak rate). The
machine is shared: each floor is measured right after its method, so that both see the same
load, and ``--repeat N`` keeps the fastest of N fits and N scorings (the floors are each the
best of three timings). Each method is first fitted once with its ``quick_params``
(untimed), so that no row pays the one-off costs of a first call.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
import warnings
from collections.abc import Iterator
from unittest import mock

import torch

from benchmarks._floors import FLOORS, UPDATE_PASSES, Rates, Work, shape_of
from benchmarks._util import peak_rss_gib, table
from fewclip import methods as registry
from fewclip.bench.config import load_config
from fewclip.testing import SyntheticWorld

#: Methods with no optimiser loop (closed forms and grid searches); the rest train.
TRAINING_FREE = frozenset({"zero-shot", "tip-adapter", "gda", "proker", "ape", "tip-x"})
TARGET_S = {True: 10.0, False: 300.0}
SHAPES = {
    "reference": {"preset": "caltech101", "shots": 16, "views": 10, "test": 5_000},
    "imagenet": {"preset": "imagenet", "shots": 16, "views": 10, "test": 50_000},
}


def _ratio(t: float, floor: float) -> float:
    return t / max(floor, 1e-9)


def _time(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


@contextlib.contextmanager
def _counting(seen: dict) -> Iterator[None]:
    """Count the L-BFGS evaluations and iterations a fit runs (the linear probe's work
    depends on them)."""
    base = torch.optim.LBFGS

    class Counting(base):  # type: ignore[misc, valid-type]
        def step(self, closure):  # type: ignore[no-untyped-def]
            out = super().step(closure)
            state = self.state[self._params[0]]
            seen["lbfgs_evals"] = seen.get("lbfgs_evals", 0) + int(state.get("func_evals", 0))
            seen["lbfgs_iters"] = seen.get("lbfgs_iters", 0) + int(state.get("n_iter", 0))
            seen["lbfgs_fits"] = seen.get("lbfgs_fits", 0) + 1
            return out

    with mock.patch.object(torch.optim, "LBFGS", Counting):
        yield


def _bound(work: Work, rates: Rates) -> str:
    """The floor's largest term."""
    terms = {
        "GEMM": sum(
            count * rates.shape_time(m, k, n, dt) for (m, k, n, dt), count in work.gemm.items()
        ),
        "solve": sum(f / rates.gemm[dt] for dt, f in work.solve.items()),
        "elementwise": work.elem / rates.elem,
        "updates": sum(c * rates.update_time(k, p) for (k, p), c in work.updates.items()),
    }
    name = max(terms, key=lambda k: terms[k])
    if name in ("GEMM", "updates") and work.steps >= 1000:
        flop_t = sum(2.0 * m * k * n * c / rates.gemm[dt] for (m, k, n, dt), c in work.gemm.items())
        flop_t += sum(UPDATE_PASSES[k] * p * c for (k, p), c in work.updates.items()) / rates.elem
        if terms["GEMM"] + terms["updates"] > 1.5 * flop_t:
            return f"latency ({work.steps:,} steps)"
    return name


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="reference")
    ap.add_argument("--methods", default="all", help="comma-separated registered names, or 'all'")
    ap.add_argument("--shots", type=int, default=None, help="default: the shape's (16)")
    ap.add_argument("--views", type=int, default=None, help="default: the shape's (10)")
    ap.add_argument("--test-size", type=int, default=None, help="default: the shape's")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument(
        "--proker-rows",
        default="features",
        help="ProKeR's kernel rows at the reference shape (features, views, mean, auto)",
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--repeat", type=int, default=1, help="fit and score N times, keep the fastest of each"
    )
    args = ap.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    shape = SHAPES[args.shape]
    shots = args.shots or shape["shots"]
    views = args.views or shape["views"]
    test_size = args.test_size or shape["test"]
    if args.methods == "all":  # synthetic features have no text encoder for the prompt learners
        names = [m for m in registry.available() if not registry.get(m).needs_text_tower]
    else:
        names = args.methods.split(",")
    unknown = sorted(set(names) - set(registry.available()))
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; registered: {registry.available()}")
    no_floor = sorted(set(names) - set(FLOORS))
    if no_floor:
        raise SystemExit(f"--methods: no floor written for {no_floor} (benchmarks/_floors.py)")
    preset = load_config("tip-adapter")
    dataset = shape["preset"]

    t0 = time.perf_counter()
    world = SyntheticWorld.from_preset(dataset, seed=0, dim=1024)  # the calibrated preset
    world.test_size = test_size
    task = world.task(shots, seed=args.seed, views=views)
    test = world.test_set()
    dims = shape_of(task, len(test.labels))
    print(
        f"{args.shape} shape ({dataset} preset): {dims.c} classes x {shots} shots, "
        f"{views} views, D={dims.d}, val {dims.nv}, test {dims.nt}; torch threads "
        f"{torch.get_num_threads()}; world built in {time.perf_counter() - t0:.0f} s",
        flush=True,
    )

    rows = []
    for name in names:
        params = preset.method_params(name, dataset)
        if name == "proker" and args.shape == "reference":
            params = {"rows": args.proker_rows, **params}
        # warm-up: the first fit of a method in a process pays one-off costs (imports, first
        # calls into MKL and the thread pool) that a cell of a grid does not
        quick = {**params, **registry.get(name).quick_params}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            registry.create(name, **quick).fit(task).score(test.features[:100], test.labels[:100])
        load = os.getloadavg()[0]
        fit_s = pred_s = float("inf")
        for _ in range(args.repeat):
            method = registry.create(name, **params)
            seen: dict = {}
            with warnings.catch_warnings(), _counting(seen):
                warnings.simplefilter("ignore")
                fit_t, _ = _time(lambda m=method: m.fit(task))
                pred_t, acc = _time(lambda m=method: m.score(test.features, test.labels))
            fit_s, pred_s = min(fit_s, fit_t), min(pred_s, pred_t)
        fit_w, pred_w = FLOORS[name](method, dims, seen)
        rates = Rates()  # measured now, under the load the method just ran with
        floors = [max(rates.flop_floor(w), rates.shape_floor(w)) for w in (fit_w, pred_w)]
        row = {
            "name": name,
            "free": name in TRAINING_FREE,
            "fit": fit_s,
            "pred": pred_s,
            "fit_floor": floors[0],
            "pred_floor": floors[1],
            "flop_floor": rates.flop_floor(fit_w) + rates.flop_floor(pred_w),
            "shape_floor": rates.shape_floor(fit_w) + rates.shape_floor(pred_w),
            "gflop": (fit_w.flops() + pred_w.flops()) / 1e9,
            "bound": _bound(fit_w, rates),
            "rate": rates.gemm["float32"] / 1e9,
            "acc": float(acc),
            "params": params,
        }
        rows.append(row)
        print(
            f"  {name}: fit {fit_s:.2f} s (floor {floors[0]:.2f}), predict {pred_s:.2f} s "
            f"(floor {floors[1]:.2f}), ratio {(fit_s + pred_s) / sum(floors):.2f}, test acc "
            f"{100 * acc:.1f}%, {row['bound']}; GEMM {row['rate']:.0f} GF/s, load {load:.1f}",
            flush=True,
        )

    out = []
    for r in rows:
        cell, floor = r["fit"] + r["pred"], r["fit_floor"] + r["pred_floor"]
        line = [
            r["name"],
            f"{r['fit']:.2f}",
            f"{r['fit_floor']:.2f}",
            f"{_ratio(r['fit'], r['fit_floor']):.1f}",
            f"{r['pred']:.2f}",
            f"{r['pred_floor']:.3f}",
            f"{_ratio(r['pred'], r['pred_floor']):.1f}",
            f"**{_ratio(cell, floor):.2f}**" if _ratio(cell, floor) > 2 else f"{cell / floor:.2f}",
            f"{r['gflop']:.0f}",
            f"{r['flop_floor']:.2f}",
            f"{r['shape_floor']:.2f}",
            r["bound"],
            f"{r['rate']:.0f}",
            f"{100 * r['acc']:.1f}",
        ]
        if args.shape == "imagenet":
            target = TARGET_S[r["free"]]
            line += [f"≤ {target:.0f}", "yes" if cell <= target else "**no**"]
        out.append(line)
    header = ["method", "fit s", "fit floor", "fit ratio", "predict s", "predict floor"]
    header += ["predict ratio", "cell ratio", "GFLOP", "FLOP floor", "shape floor", "bound"]
    header += ["GEMM GF/s", "test acc %"]
    if args.shape == "imagenet":
        header += ["target s", "met"]
    print()
    print(table(header, out))
    params = [f"{r['name']}: {r['params']}" for r in rows if r["params"]]
    if params:
        print("\nparams: " + "; ".join(params))
    print(f"peak RSS {peak_rss_gib():.2f} GiB (whole process, features included)")


if __name__ == "__main__":
    main()
