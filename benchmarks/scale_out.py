"""Scale-out: a fixed benchmark grid and an extraction, locally and on Ray, in one run.

    python -m benchmarks.scale_out [--cells 200] [--images 4000] [--skip-grid] [--skip-extract]

**Grid.** ``--cells`` cells (default 200: zero-shot and tip-adapter x shots 1/2/4/8/16 x 20
seeds) on one synthetic dataset of ImageNet's shape, made smaller so that a cell takes a
fraction of a second (1,000 classes, D = 512, 5,000 test images, 4 views; protocol
``fewshot-val``). The same grid runs four ways, each into a fresh results file:

- **local, 1 job**: ``run_bench`` in this process with one torch thread (the baseline: the
  same compute per cell as a worker);
- **local, 2 jobs**: ``run_bench(jobs=2)``, two forked worker processes;
- **ray, 1 worker** and **ray, 2 workers**: ``RayExecutor(workers=N)`` on a local
  ``ray.init(num_cpus=2)`` started before the timings (actor start-up is counted, Ray's own
  start is not: a cluster is already up when a user submits a grid).

Targets (issue 19): ray 2 workers ≥ 0.9 x local 2 jobs and ≥ 1.7 x ray 1 worker. Ray's
per-cell overhead is (ray 1 worker − local 1 job) / cells.

**Extraction.** ``--images`` generated photo-like 320 x 256 JPEGs, the tiny ViT backbone
(random weights), plain features only, shards of 250 rows: model only (``encode_images`` on
preprocessed tensors, batches of 64, this process), end to end in this process (decoding in
the main process, torch's default threads), and end to end on 1 and 2 Ray actors (one CPU and
one torch thread each). The Ray pool's start-up (actors up, backbone received) is timed
separately, on an empty job, and the Ray rows also give images/s net of it. With the tiny
model, decoding and resizing are most of the work, as they are for a large model on a GPU.

Every grid run must give the same rows (timings aside); the script checks it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from benchmarks._util import table
from fewclip.bench import BenchConfig, run_bench
from fewclip.bench.synthetic import synthetic_prepare
from fewclip.executors import RayExecutor
from fewclip.testing.synthetic import DatasetShape

SHAPE = DatasetShape("imagenet", 1000, 1_281_167, 0, 5_000, dim=512)


def _config(cells: int) -> BenchConfig:
    seeds = max(1, cells // 10)
    return BenchConfig(
        methods=("zero-shot", "tip-adapter"),
        datasets=("imagenet",),
        shots=(1, 2, 4, 8, 16),
        seeds=tuple(range(1, seeds + 1)),
        backbones=("synthetic",),
        protocol="fewshot-val",
        views=4,
        params={"tip-adapter": {"search_scale": [7, 3], "search_step": [10, 5]}},
    )


def _result(row: dict) -> tuple:  # type: ignore[type-arg]
    return (row["hash"], row["accuracy"], repr(row["params"]))


def grid(cells: int, out: Path) -> list[list[str]]:
    import ray

    cfg = _config(cells)
    prepare = synthetic_prepare(shapes={"imagenet": SHAPE}, n_views=4, calibrate=False)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    timings: dict[str, float] = {}
    results: dict[str, list[tuple]] = {}  # type: ignore[type-arg]
    runs = {
        "local, 1 job": {"jobs": 1},
        "local, 2 jobs": {"jobs": 2},
        "ray, 1 worker": {"executor": RayExecutor(workers=1)},
        "ray, 2 workers": {"executor": RayExecutor(workers=2)},
    }
    threads = torch.get_num_threads()
    for name, kwargs in runs.items():
        torch.set_num_threads(1 if name == "local, 1 job" else threads)
        path = out / f"{name.replace(', ', '-').replace(' ', '')}.jsonl"
        t0 = time.perf_counter()
        rows = run_bench(cfg, prepare, path, quiet=True, **kwargs)  # type: ignore[arg-type]
        timings[name] = time.perf_counter() - t0
        results[name] = [_result(r) for r in rows]
        print(f"{name}: {len(rows)} cells in {timings[name]:.1f} s", flush=True)
    torch.set_num_threads(threads)
    ray.shutdown()
    base = results["local, 1 job"]
    same = all(r == base for r in results.values())
    n = len(base)
    overhead_ms = 1000 * (timings["ray, 1 worker"] - timings["local, 1 job"]) / n
    rows = [
        [name, str(n), f"{t:.1f}", f"{n / t:.2f}", f"{timings['local, 1 job'] / t:.2f}x"]
        for name, t in timings.items()
    ]
    print()
    print(table(["run", "cells", "seconds", "cells/s", "vs local 1 job"], rows))
    r2_l2 = timings["local, 2 jobs"] / timings["ray, 2 workers"]
    r2_r1 = timings["ray, 1 worker"] / timings["ray, 2 workers"]
    print(
        f"\nray 2 workers = {r2_l2:.2f}x local 2 jobs (target >= 0.9), "
        f"{r2_r1:.2f}x ray 1 worker (target >= 1.7); Ray overhead {overhead_ms:.0f} ms per "
        f"cell; rows identical across the four runs: {same}"
    )
    return rows


def _ready(state: object) -> object:
    return state


def _nothing(state: object, item: int) -> int:
    return item


def extraction(n: int, out: Path) -> None:
    import ray

    import fewclip.backbones as fb
    from benchmarks.extract_speed import make_jpegs
    from fewclip.features import extract
    from fewclip.imageio import decode_image

    (out / "images").mkdir()
    paths = make_jpegs(out / "images", n, 320, 256)
    bb = fb.load("fewclip-tiny-vit")
    x = torch.stack([bb.eval_transform(decode_image(p)) for p in paths])
    t0 = time.perf_counter()
    for i in range(0, n, 64):
        bb.encode_images(x[i : i + 64])
    model_s = time.perf_counter() - t0
    timings = {"model only (this process)": model_s}
    t0 = time.perf_counter()
    extract(bb, paths, store=out / "local", shard_size=250, progress=False)
    timings["end to end, this process"] = time.perf_counter() - t0
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    startup: dict[str, float] = {}
    for workers in (1, 2):
        name = f"end to end, ray {workers} actor{'s' if workers > 1 else ''}"
        t0 = time.perf_counter()
        list(RayExecutor(workers=workers).map(_ready, bb, _nothing, list(range(workers))))
        startup[name] = time.perf_counter() - t0
        t0 = time.perf_counter()
        extract(
            bb, paths, store=out / f"ray{workers}", shard_size=250, progress=False,
            executor=RayExecutor(workers=workers),
        )  # fmt: skip
        timings[name] = time.perf_counter() - t0
    ray.shutdown()
    rows = []
    for name, t in timings.items():
        start = startup.get(name)
        net = "" if start is None else f"{n / (t - start):.0f}"
        rows.append(
            [name, f"{t:.2f}", "" if start is None else f"{start:.2f}", f"{n / t:.0f}", net,
             f"{model_s / t:.2f}x"]
        )  # fmt: skip
    print()
    print(f"extraction: {n} JPEGs of 320x256, fewclip-tiny-vit (random weights), plain features")
    header = ["run", "seconds", "pool start-up s", "images/s", "images/s net of start-up"]
    print(table([*header, "vs model only"], rows))
    local = timings["end to end, this process"]
    two, one = timings["end to end, ray 2 actors"], timings["end to end, ray 1 actor"]
    print(f"\nray 2 actors = {one / two:.2f}x ray 1 actor, {local / two:.2f}x this process")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", type=int, default=200)
    ap.add_argument("--images", type=int, default=4000)
    ap.add_argument("--skip-extract", action="store_true")
    ap.add_argument("--skip-grid", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fewclip-scale-") as tmp:
        out = Path(tmp)
        if not args.skip_grid:
            grid(args.cells, out)
        if not args.skip_extract:
            extraction(args.images, out)


if __name__ == "__main__":
    main()
