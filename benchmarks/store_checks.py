"""The cost of checking every read of the feature store: load times with the xxHash3 checks on
against the same loads with them off, on an ImageNet-size entry (measured in the same run).

    python -m benchmarks.store_checks [--rows 1281167] [--dim 1024] [--dtype float16]
                                      [--repeats 3] [--dir DIR]

Writes one entry of ``rows`` × ``dim`` features (default: ImageNet's train split at ViT-L/14's
width in float16, 2.6 GB; it needs that much free disk in ``--dir``, default a temporary
folder) with the store's default shard size, then loads it in four ways, each ``repeats``
times with the page cache warm (the median is reported):

- ``load(mmap=False)``: the whole tensor read into memory;
- ``load(mmap=True)`` + a pass over the data (what a fit does with it);
- ``load(rows=16 per class)``: a 16-shot draw of 1,000 classes, memory-mapped;
- ``iter_shards`` + a pass over each shard.

"checks on" starts each repeat with an empty verified-file cache, i.e. it measures the first
read of the entry in a process, the worst case (later reads of the same files skip the hash).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks._util import table
from fewclip.features import FeatureStore, entry_key
from fewclip.features import store as store_mod


def _write(store: FeatureStore, rows: int, dim: int, dtype: torch.dtype) -> str:
    record = {"kind": "benchmark", "rows": rows, "dim": dim, "dtype": str(dtype)}
    key = entry_key(record)
    if store.has(key):
        return key
    with store.lock([key]):
        w = store.writer(key, record, n_rows=rows, dim=dim, dtype=dtype)
        g = torch.Generator().manual_seed(0)
        for i in range(w.n_shards):
            start, stop = w.shard_range(i)
            w.write_shard(i, torch.randn(stop - start, dim, generator=g).to(dtype))
        w.finalize()
    return key


def _timed(fn: Callable[[], object], repeats: int, *, fresh: bool) -> float:
    times = []
    for _ in range(repeats):
        if fresh:
            store_mod._VERIFIED.clear()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_281_167)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        store = FeatureStore(tmp)
        t0 = time.perf_counter()
        key = _write(store, args.rows, args.dim, dtype)
        gib = store.info(key).nbytes / 2**30
        print(f"wrote {args.rows} x {args.dim} {args.dtype} ({gib:.2f} GiB) in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)  # fmt: skip
        n_classes = 1000
        per_class = args.rows // n_classes
        draw = torch.arange(n_classes).repeat_interleave(16) * per_class + torch.arange(16).repeat(
            n_classes
        )

        def whole(check: bool) -> object:
            return store.load(key, mmap=False, check=check)

        def mapped(check: bool) -> object:
            return store.load(key, mmap=True, check=check).float().sum()

        def few(check: bool) -> object:
            return store.load(key, rows=draw, check=check)

        def shards(check: bool) -> object:
            if check:
                return sum(float(t.float().sum()) for _, t in store.iter_shards(key))
            rec = store._record(key)
            return sum(
                float(
                    store_mod._read_shard(store.entry_dir(key) / s["file"], mmap=True).float().sum()
                )
                for s in rec["shards"]
            )

        whole(False)  # warm the page cache
        rows = []
        for name, fn in (
            ("load(mmap=False)", whole),
            ("load(mmap=True) + pass", mapped),
            ("load(rows=16-shot draw)", few),
            ("iter_shards + pass", shards),
        ):
            off = _timed(lambda fn=fn: fn(False), args.repeats, fresh=False)
            on = _timed(lambda fn=fn: fn(True), args.repeats, fresh=True)
            rows.append([name, f"{off:.2f} s", f"{on:.2f} s", f"{on / off:.2f}x"])
            print(f"{name} done", flush=True)
        print(table(["read", "checks off", "checks on (first read)", "ratio"], rows))


if __name__ == "__main__":
    main()
