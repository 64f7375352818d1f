"""Few-shot curves of the calibrated synthetic presets next to CLIP RN50's published numbers.

    python scripts/world_curves.py [--presets all] [--seeds 1,2,3] [--imagenet-seeds 1]
                                   [--shots 1,2,4,8,16]
                                   [--methods tip-adapter,tip-adapter-f,clip-adapter,linear-probe]
                                   [--cache world_curves.json] [--out world_curves.md]

For each preset, ``SyntheticWorld.from_preset(name)`` (the calibrated world: seed 0, D = 1024),
every method is fitted on ``world.task(shots, seed=s, views=10, val=validation_rule(name))``
with the ``tip-adapter`` bench preset's hyper-parameters and scored on the preset's test set;
accuracies are averaged over the seeds (ImageNet: ``--imagenet-seeds``, by default seed 1
only, as the paper; its trained methods take most of the time). Only zero-shot and 16-shot
Tip-Adapter were calibrated (at seed 1); everything else is free. The markdown written to
``--out`` (and printed) holds the tables of docs/benchmarks.md: the calibration, the world's
geometry, each method's curve as ``world (published, world − published)``, and the shape
checks.

Results are cached per (preset, method, shots, seed) in ``--cache`` (JSON), so an interrupted
run resumes and a second call only formats. Not run in CI: about 90 minutes on one core
(ImageNet about 20 of them; ``--presets`` and ``--seeds`` cut it down).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from fewclip.functional import l2_normalize
from fewclip.testing import calibration as cal
from fewclip.testing.synthetic import PRESETS, SyntheticWorld

METHODS = ("tip-adapter", "tip-adapter-f", "clip-adapter", "linear-probe")
LABELS = {
    "tip-adapter": "Tip-Adapter",
    "tip-adapter-f": "Tip-Adapter-F",
    "clip-adapter": "CLIP-Adapter",
    "linear-probe": "Linear probe",
}


def geometry(world: SyntheticWorld, test: Any) -> dict[str, float]:
    """Mean cosine similarities: image–image within and between classes (on 20 test images a
    class, at most 4,000), image–text for the true class and for all classes, text–text."""
    per = max(2, min(20, 4000 // world.n_classes))
    idx = torch.cat(
        [torch.nonzero(test.labels == c).flatten()[:per] for c in range(world.n_classes)]
    )
    x = l2_normalize(test.features[idx].double())
    y = test.labels[idx]
    sim = x @ x.T
    same = (y[:, None] == y[None]) & ~torch.eye(len(y), dtype=torch.bool)
    diff = y[:, None] != y[None]
    t = world.text_weights.double()
    it = x @ t.T
    tt = t @ t.T
    off = ~torch.eye(len(t), dtype=torch.bool)
    return {
        "within": float(sim[same].mean()),
        "between": float(sim[diff].mean()),
        "image_text_true": float(it[torch.arange(len(y)), y].mean()),
        "image_text": float(it.mean()),
        "text_text": float(tt[off].mean()),
    }


def run(names, methods, shots_list, seeds, inet_seeds, cache_path: Path) -> dict[str, Any]:
    cache: dict[str, Any] = {}
    if cache_path.exists():
        cache = json.loads(cache_path.read_text(encoding="utf-8"))

    def save() -> None:
        fd, tmp = tempfile.mkstemp(dir=cache_path.parent, prefix=".curves.", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(cache, fh, indent=1, sort_keys=True)
        os.replace(tmp, cache_path)

    for name in names:
        world = SyntheticWorld.from_preset(name)
        test = world.test_set()
        info = cache.setdefault(name, {})
        if "zero-shot" not in info:
            info["zero-shot"] = 100.0 * world.zero_shot_accuracy(test)
            info["confidence"] = cal.zero_shot_confidence(world, test)
            info["nn1"] = cal.nearest_neighbour_accuracy(world, 1, test=test)
            info["nn16"] = cal.nearest_neighbour_accuracy(world, 16, test=test)
            info["geometry"] = geometry(world, test)
            info["tip16_seed1"] = cal.evaluate(world, "tip-adapter", 16, seed=1, test=test)
            save()
        for method in methods:
            for shots in shots_list:
                for seed in inet_seeds if name == "imagenet" else seeds:
                    key = f"{method}/{shots}/{seed}"
                    if key in info:
                        continue
                    t0 = time.perf_counter()
                    info[key] = cal.evaluate(world, method, shots, seed=seed, test=test)
                    print(
                        f"{name} {method} {shots}-shot seed {seed}: {info[key]:.2f} "
                        f"({time.perf_counter() - t0:.0f} s)",
                        flush=True,
                    )
                    save()
    return cache


def curve(info: dict[str, Any], method: str, shots_list, seeds) -> list[float] | None:
    out = []
    for k in shots_list:
        vals = [info[f"{method}/{k}/{s}"] for s in seeds if f"{method}/{k}/{s}" in info]
        if not vals:
            return None
        out.append(statistics.fmean(vals))
    return out


def _cell(world: float, published: float | None) -> str:
    if published is None:
        return f"{world:.1f}"
    return f"{world:.1f} ({published:.1f}, {world - published:+.1f})"


def _monotone(c: list[float], slack: float = 0.5) -> bool:
    return all(b >= a - slack for a, b in itertools.pairwise(c))


def report(cache: dict[str, Any], names, methods, shots_list, seeds) -> str:
    shots_list = list(shots_list)
    out: list[str] = []
    head = "| dataset | " + " | ".join(f"{k} shot{'s' if k > 1 else ''}" for k in shots_list)
    sep = "|---" * (len(shots_list) + 1) + "|"

    out.append("**Calibration** (seed 1; the two fitted numbers per dataset)\n")
    out.append(
        "| dataset | zero-shot: world (published) | Tip-Adapter 16-shot: world (published) "
        "| zero-shot confidence | 1-NN, 1 shot | 1-NN, 16 shots | chance |"
    )
    out.append("|---|---|---|---|---|---|---|")
    for name in names:
        info = cache.get(name)
        if not info:
            continue
        zs_t, tip_t = cal.TARGETS[name]
        out.append(
            f"| {name} | {info['zero-shot']:.2f} ({zs_t:.2f}) | {info['tip16_seed1']:.2f} "
            f"({tip_t:.2f}) | {info['confidence']:.1f} | {info['nn1']:.1f} | "
            f"{info['nn16']:.1f} | {100 / PRESETS[name].classes:.1f} |"
        )

    out.append("\n**Geometry** (mean cosine similarities on the test set)\n")
    out.append(
        "| dataset | image–image, same class | image–image, other classes "
        "| image–text, true class | image–text, all | text–text |"
    )
    out.append("|---|---|---|---|---|---|")
    for name in names:
        g = cache.get(name, {}).get("geometry")
        if g:
            out.append(
                f"| {name} | {g['within']:.2f} | {g['between']:.2f} | "
                f"{g['image_text_true']:.2f} | {g['image_text']:.2f} | {g['text_text']:.2f} |"
            )

    for method in methods:
        out.append(
            f"\n**{LABELS.get(method, method)}**: world (published, world − published), mean over "
            f"the draw seeds run of {','.join(map(str, seeds))}\n"
        )
        out.append(head + " |")
        out.append(sep)
        for name in names:
            info = cache.get(name)
            c = curve(info, method, shots_list, seeds) if info else None
            if c is None:
                continue
            pub = cal.PUBLISHED[name].get(method)
            cells = []
            for i, k in enumerate(shots_list):
                p = pub[cal.SHOTS.index(k)] if pub is not None and k in cal.SHOTS else None
                cells.append(_cell(c[i], p))
            out.append(f"| {name} | " + " | ".join(cells) + " |")

    out.append("\n**Shape checks** (world; yes/no)\n")
    cols = [
        "Tip monotone",
        "Tip-F monotone",
        "CLIP-A monotone",
        "LP monotone",
        "Tip-F ≥ Tip at 16",
        "LP < zero-shot at 1",
        "LP > zero-shot at 16",
    ]
    out.append("| dataset | " + " | ".join(cols) + " |")
    out.append("|---" * (len(cols) + 1) + "|")
    counts = [0] * len(cols)
    rows = 0
    for name in names:
        info = cache.get(name)
        if not info:
            continue
        cs = {m: curve(info, m, shots_list, seeds) for m in METHODS}
        if any(v is None for v in cs.values()) or shots_list[0] != 1 or shots_list[-1] != 16:
            continue
        zs = info["zero-shot"]
        checks = [
            _monotone(cs["tip-adapter"]),
            _monotone(cs["tip-adapter-f"]),
            _monotone(cs["clip-adapter"]),
            _monotone(cs["linear-probe"]),
            cs["tip-adapter-f"][-1] >= cs["tip-adapter"][-1],
            cs["linear-probe"][0] < zs,
            cs["linear-probe"][-1] > zs,
        ]
        rows += 1
        counts = [n + int(v) for n, v in zip(counts, checks, strict=False)]
        out.append(f"| {name} | " + " | ".join("yes" if v else "**no**" for v in checks) + " |")
    if rows:
        out.append("| **datasets passing** | " + " | ".join(f"{n}/{rows}" for n in counts) + " |")
    out.append(
        "\nMonotone: no drop larger than 0.5 points from one shot count to the next. "
        "Published per-dataset linear-probe numbers exist only for ImageNet (Table 2)."
    )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--presets", default="all", help="comma-separated PRESETS names, or 'all'")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--shots", default="1,2,4,8,16")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--imagenet-seeds", default="1", help="draw seeds for ImageNet")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--cache", type=Path, default=Path("world_curves.json"))
    ap.add_argument("--out", type=Path, default=None, help="also write the markdown here")
    ap.add_argument("--report-only", action="store_true", help="format the cache, fit nothing")
    args = ap.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    names = list(PRESETS) if args.presets == "all" else args.presets.split(",")
    unknown = sorted(set(names) - set(cal.PUBLISHED))
    if unknown:
        raise SystemExit(f"--presets: unknown {unknown}; known: {', '.join(cal.PUBLISHED)}")
    methods = args.methods.split(",")
    shots_list = [int(s) for s in args.shots.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    inet_seeds = [int(s) for s in args.imagenet_seeds.split(",")]
    if args.report_only:
        cache = json.loads(args.cache.read_text(encoding="utf-8")) if args.cache.exists() else {}
    else:
        cache = run(names, methods, shots_list, seeds, inet_seeds, args.cache)
    text = report(cache, names, methods, shots_list, sorted(set(seeds) | set(inet_seeds)))
    print(text)
    if args.out is not None:
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
