"""Seeds one by one against one batched fit (``fewclip.methods.fit_seeds(force=True)``).

    python -m benchmarks.seed_batching [--methods clip-adapter,tip-adapter-f]
                                       [--shapes 47x16,10x2,1000x16] [--seeds 3]
                                       [--epochs 20] [--repeats 2] [--threads 1]

For each method and shape ``CxK`` (C classes, K shots; D = 1024, 10 stored views, a
validation set of min(K, 4) images a class), S tasks of that shape (one draw per seed) are
fitted first one by one (``fit``), then as one batched model, ``--repeats`` times in turn
after a warm-up; the table gives the best time of each, their ratio (> 1: batching is faster)
and whether every seed's logits agree. ``--epochs`` applies to every method (a short schedule
keeps the ImageNet shape to minutes; the per-step cost does not depend on it); Tip-Adapter-F's
(β, α) search after training runs on a 10 × 5 grid (it is not batched).
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks._util import table
from fewclip import methods
from fewclip.task import FeatureSet, Task


def _task(c: int, k: int, seed: int, dim: int, views: int) -> Task:
    g = torch.Generator().manual_seed(seed)
    text = torch.nn.functional.normalize(
        torch.randn(c, dim, generator=torch.Generator().manual_seed(0)), dim=1
    )
    labels = torch.arange(c).repeat_interleave(k)
    feats = text[labels] + 0.05 * torch.randn(c * k, dim, generator=g)
    bank = feats + 0.02 * torch.randn(views, c * k, dim, generator=g)
    vy = torch.arange(c).repeat_interleave(min(k, 4))
    vx = text[vy] + 0.05 * torch.randn(len(vy), dim, generator=g)
    return Task(
        [f"c{i}" for i in range(c)], text, FeatureSet(feats, labels, bank), FeatureSet(vx, vy)
    )


def _shape(text: str) -> tuple[int, int]:
    try:
        c, k = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--shapes: expected CxK (e.g. 47x16), found {text!r}") from None
    return c, k


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--methods", default="clip-adapter,tip-adapter-f")
    ap.add_argument("--shapes", default="10x2,47x1,47x16,10x16")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--views", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for name in [m.strip() for m in args.methods.split(",") if m.strip()]:
        extra = {"search_step": (10, 5)} if name == "tip-adapter-f" else {}
        for c, k in (_shape(s) for s in args.shapes.split(",") if s.strip()):
            seeds = list(range(1, args.seeds + 1))
            tasks = [_task(c, k, s, args.dim, args.views) for s in seeds]
            x = tasks[0].val.features if tasks[0].val is not None else tasks[0].support.features

            def create(
                seed: int, epochs: int, name: str = name, extra: dict = extra
            ) -> methods.Method:
                return methods.create(name, seed=seed, epochs=epochs, **extra)

            # warm-up: one epoch each way
            create(1, 1).fit(tasks[0])
            methods.fit_seeds([create(s, 1) for s in seeds], tasks, force=True)
            alone, together, same = [], [], True
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                solo = [create(s, args.epochs).fit(t) for s, t in zip(seeds, tasks, strict=True)]
                alone.append(time.perf_counter() - t0)
                batch = [create(s, args.epochs) for s in seeds]
                t0 = time.perf_counter()
                n = methods.fit_seeds(batch, tasks, force=True)
                together.append(time.perf_counter() - t0)
                assert n == len(seeds)
                same = same and all(
                    torch.equal(a.logits(x), b.logits(x)) for a, b in zip(solo, batch, strict=True)
                )
            a, b = min(alone), min(together)
            rows.append(
                [name, f"{c}x{k}", str(args.epochs), f"{a:.2f} s", f"{b:.2f} s", f"{a / b:.2f}",
                 "bit for bit" if same else "NO"]
            )  # fmt: skip
            print(" | ".join(rows[-1]), flush=True)
    header = ["method", "C x K", "epochs", f"{args.seeds} alone", "batched", "ratio", "logits"]
    print(table(header, rows))


if __name__ == "__main__":
    main()
