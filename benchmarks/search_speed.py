"""search_tip against the reference loop structure at ImageNet 16-shot shape.

    python -m benchmarks.search_speed [--val 10000] [--slice-betas 2] [--slice-alphas 3]

Shape: 1000 classes, 16,000 keys, D = 1024, 10,000 validation rows, grid 200 × 20 (synthetic
features, float32, CPU). The reference loop (β outer, α inner; every point recomputes the
affinity, the exp, the dense one-hot product and the CLIP logits) is timed on a slice of the
grid and extrapolated per grid point; both implementations must pick the same point on that
slice. Our search runs first in this process, so the reported peak memory is its own plus the
inputs.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks._util import peak_rss_gib, table
from fewclip import functional as F
from fewclip.testing import SyntheticWorld


def reference_counts(x, y, keys, labels, w, betas, alphas):
    values = torch.nn.functional.one_hot(labels, w.shape[0]).to(x.dtype)
    counts = torch.zeros(len(betas), len(alphas), dtype=torch.long)
    for i, beta in enumerate(betas):
        for j, alpha in enumerate(alphas):
            affinity = x @ keys.T
            cache_logits = ((-1) * (beta - beta * affinity)).exp() @ values
            clip_logits = 100.0 * x @ w.T
            logits = clip_logits + cache_logits * alpha
            counts[i, j] = int((logits.argmax(1) == y).sum())
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--val", type=int, default=10_000)
    ap.add_argument("--slice-betas", type=int, default=2)
    ap.add_argument("--slice-alphas", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())

    world = SyntheticWorld(args.classes, args.dim, seed=0, val_size=args.val)
    support = world.support(args.shots, seed=1, views=1)
    keys = F.cache_keys(support.views)
    labels = support.labels
    val = world.validation(None, seed=1)
    x, y = F.l2_normalize(val.features), val.labels
    w = world.text_weights
    betas, alphas = F.reference_grid(7, 200), F.reference_grid(3, 20)

    t0 = time.perf_counter()
    full = F.search_tip(x, y, keys, labels, w, search_scale=(7, 3), search_step=(200, 20))
    ours_s = time.perf_counter() - t0
    peak = peak_rss_gib()

    sb, sa = betas[: args.slice_betas], alphas[: args.slice_alphas]
    t0 = time.perf_counter()
    ref = reference_counts(x, y, keys, labels, w, sb, sa)
    ref_point = (time.perf_counter() - t0) / (len(sb) * len(sa))
    ours_slice = F.tip_grid_counts(x, y, keys, labels, w, sb, sa)
    same = F.first_best(ref) == F.first_best(ours_slice)
    identical_counts = torch.equal(ref, ours_slice)
    ref_total = ref_point * len(betas) * len(alphas)

    print(
        f"shape: {args.classes} classes, {len(keys)} keys, D={args.dim}, {len(x)} val rows, "
        f"grid {len(betas)}x{len(alphas)}, {torch.get_num_threads()} threads"
    )
    print(
        table(
            ["implementation", "time for the 4000-point grid", "per point", "ratio"],
            [
                [
                    "reference loop (extrapolated)",
                    f"{ref_total:,.0f} s",
                    f"{ref_point * 1e3:,.0f} ms",
                    "1x",
                ],
                [
                    "fewclip search_tip",
                    f"{ours_s:,.1f} s",
                    f"{ours_s / 4000 * 1e3:,.2f} ms",
                    f"{ref_total / ours_s:,.0f}x",
                ],
            ],
        )
    )
    print(
        f"slice {len(sb)}x{len(sa)}: same selected point: {same}; identical counts: "
        f"{identical_counts}; full-grid choice beta={full[0]:.4f} alpha={full[1]:.4f} "
        f"acc={full[2]:.2f}%"
    )
    print(f"peak memory (process, after our search, inputs included): {peak:.2f} GiB")


if __name__ == "__main__":
    main()
