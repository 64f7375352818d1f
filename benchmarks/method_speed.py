"""Every registered method on one ImageNet 16-shot cell: fit and predict times against targets.

    python -m benchmarks.method_speed [--methods all] [--shots 16] [--threads 2]

Shape: 1,000 classes, 16 shots (16,000 support images) with 10 stored augmented views,
D = 1024, few-shot validation of 4 images per class, and the 50,000-image test set; synthetic
features (the calibrated ImageNet preset, ``SyntheticWorld.from_preset("imagenet")``: zero-shot
and 16-shot Tip-Adapter at RN50's published 60.3% and 62.0%), float32, CPU. Hyper-parameters
are the defaults plus the ImageNet entries of the ``tip-adapter`` bench preset (CLIP-Adapter 50
epochs, Tip's search ranges, TaskRes lr), so a row is one cell of ``fewclip bench`` at that
shape.

Targets (issue #6): a training-free method ≤ 10 s per cell, a trained one ≤ 5 min. The
baseline measured in the same run is Tip-Adapter, the paper's training-free method; the
``vs tip`` column is each cell's time over Tip-Adapter's.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import torch

from benchmarks._util import peak_rss_gib, table
from fewclip import methods as registry
from fewclip.bench.config import load_config
from fewclip.testing import SyntheticWorld

#: Methods with no optimiser loop (closed forms and grid searches); the rest train.
TRAINING_FREE = frozenset({"zero-shot", "tip-adapter", "gda", "proker", "ape", "tip-x"})
TARGET_S = {True: 10.0, False: 300.0}


def _time(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--methods", default="all", help="comma-separated registered names, or 'all'")
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--views", type=int, default=10)
    ap.add_argument("--test-size", type=int, default=50_000)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.methods == "all":  # synthetic features have no text encoder for the prompt learners
        names = [m for m in registry.available() if not registry.get(m).needs_text_tower]
    else:
        names = args.methods.split(",")
    if "tip-adapter" not in names:
        names = ["tip-adapter", *names]
    unknown = sorted(set(names) - set(registry.available()))
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; registered: {registry.available()}")
    preset = load_config("tip-adapter")

    t0 = time.perf_counter()
    world = SyntheticWorld.from_preset("imagenet", seed=0, dim=1024)  # the calibrated preset
    world.test_size = args.test_size
    task = world.task(args.shots, seed=args.seed, views=args.views)
    test = world.test_set()
    assert task.val is not None
    print(
        f"ImageNet shape: {task.n_classes} classes x {args.shots} shots, "
        f"{args.views} views, D={task.dim}, val {len(task.val.labels)}, test {len(test.labels)}; "
        f"torch threads {torch.get_num_threads()}; world built in "
        f"{time.perf_counter() - t0:.0f} s; zero-shot test acc "
        f"{100 * world.zero_shot_accuracy(test):.1f}% (calibrated synthetic preset)",
        flush=True,
    )

    rows, times = [], {}
    for name in names:
        params = preset.method_params(name, "imagenet")
        method = registry.create(name, **params)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit_s, _ = _time(lambda m=method: m.fit(task))
            pred_s, acc = _time(lambda m=method: m.score(test.features, test.labels))
        free = name in TRAINING_FREE
        times[name] = fit_s + pred_s
        rows.append((name, free, fit_s, pred_s, float(acc), params))
        print(
            f"  {name}: fit {fit_s:.1f} s, predict {pred_s:.1f} s, test acc {100 * acc:.1f}% "
            f"(load {os.getloadavg()[0]:.1f})",
            flush=True,
        )

    base = times["tip-adapter"]
    out = []
    for name, free, fit_s, pred_s, acc, params in rows:
        total = fit_s + pred_s
        target = TARGET_S[free]
        out.append(
            [
                name,
                "training-free" if free else "trained",
                f"{fit_s:.1f}",
                f"{pred_s:.1f}",
                f"{total:.1f}",
                f"{total / base:.2f}",
                f"≤ {target:.0f}",
                "yes" if total <= target else "**no**",
                f"{100 * acc:.1f}",
                ", ".join(f"{k}={v}" for k, v in params.items()) or "defaults",
            ]
        )
    header = ["method", "kind", "fit s", "predict s", "cell s", "vs tip", "target s", "met"]
    print()
    print(table([*header, "test acc %", "ImageNet params"], out))
    print(f"\npeak RSS {peak_rss_gib():.2f} GiB (whole process, features included)")


if __name__ == "__main__":
    main()
