"""Tip-Adapter-F training at ImageNet 16-shot shape on stored views, against the reference step.

    python -m benchmarks.train_speed [--epochs 20] [--baseline-epochs 1]

Shape: 1000 classes, 16 shots (16,000 keys), D = 1024, 10 stored augmented views, few-shot
validation of 4 images per class, 20 epochs, batch 256 (synthetic features, float32, CPU).
The baseline is the reference's training step on the same cached features (dense one-hot
value matrix, logits recomputed the reference way), timed for ``--baseline-epochs`` epochs and
extrapolated; the reference additionally re-encodes every augmented image with the frozen
CLIP encoder at every step, which is not counted here (it needs a GPU: about 5 minutes on an
RTX 3090 for the same 20 epochs).
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from benchmarks._util import peak_rss_gib, table
from fewclip import functional as F
from fewclip import methods
from fewclip.testing import SyntheticWorld


def reference_epochs(task, epochs: int, alpha=1.0, beta=1.0, batch=256, lr=1e-3) -> float:
    """Seconds for ``epochs`` epochs of the reference step structure on cached features."""
    bank = task.support.views
    n = bank.shape[1]
    w = F.l2_normalize(task.text_weights)
    values = torch.nn.functional.one_hot(task.support.labels, task.n_classes).float()
    adapter = torch.nn.Linear(bank.shape[2], n, bias=False)
    adapter.weight.data = F.cache_keys(bank).clone()
    optim = torch.optim.AdamW(adapter.parameters(), lr=lr, eps=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optim, 20 * math.ceil(n / batch))
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(n, generator=g)
        view = torch.randint(bank.shape[0], (n,), generator=g)
        for s in range(0, n, batch):
            idx = order[s : s + batch]
            x = F.l2_normalize(bank[view[idx], idx])
            affinity = adapter(x)
            cache_logits = ((-1) * (beta - beta * affinity)).exp() @ values
            logits = 100.0 * x @ w.T + cache_logits * alpha
            loss = torch.nn.functional.cross_entropy(logits, task.support.labels[idx])
            optim.zero_grad()
            loss.backward()
            optim.step()
            sched.step()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--views", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--baseline-epochs", type=int, default=1)
    args = ap.parse_args()

    world = SyntheticWorld(args.classes, args.dim, seed=0)
    task = world.task(args.shots, seed=1, views=args.views, val="fewshot")
    mem_inputs = peak_rss_gib()

    t0 = time.perf_counter()
    tipf = methods.create("tip-adapter-f", epochs=args.epochs, search=False, progress=True)
    tipf.fit(task)
    ours = time.perf_counter() - t0
    mem_ours = peak_rss_gib()

    base = reference_epochs(task, args.baseline_epochs) * args.epochs / args.baseline_epochs
    print(
        f"shape: {args.classes} classes x {args.shots} shots, D={args.dim}, {args.views} views, "
        f"{task.val.n} val rows, {args.epochs} epochs, batch 256, {torch.get_num_threads()} threads"
    )
    print(
        table(
            ["implementation", f"{args.epochs} epochs", "ratio"],
            [
                ["reference step on cached features (extrapolated)", f"{base:,.0f} s", "1x"],
                [
                    "fewclip tip-adapter-f (incl. per-epoch val)",
                    f"{ours:,.0f} s",
                    f"{base / ours:.2f}x",
                ],
            ],
        )
    )
    print(f"best epoch on validation: {tipf.best_epoch_}")
    print(f"peak memory: inputs {mem_inputs:.2f} GiB, after training {mem_ours:.2f} GiB")


if __name__ == "__main__":
    main()
