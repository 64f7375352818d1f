"""Extraction speed: JPEG files on disk → stored features, against the model alone.

Both figures come from the same run, model and batch size:

- **model only**: images already decoded and preprocessed into one tensor; only
  ``backbone.encode_images`` is timed;
- **end to end**: ``fewclip.features.extract`` on the JPEG paths into a fresh feature store
  (decode, resize/crop, normalise, encode, write safetensors shards and the record).

Target: end to end ≥ 0.85 x model only. Default: CPU, ViT-B-32 with random weights, 384 JPEGs
of 320x256 (ImageNet-like sizes), which takes about a minute and a half on 2 cores.

    python -m benchmarks.extract_speed
    python -m benchmarks.extract_speed --n 1000 --device cuda --batch-size 256 --num-workers 8
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import fewclip.backbones as fb
from benchmarks._util import peak_rss_gib, table
from fewclip.features import extract
from fewclip.imageio import decode_image


def make_jpegs(folder: Path, n: int, width: int, height: int, seed: int = 0) -> list[str]:
    """Photo-like JPEGs: smooth random colour fields with a little noise, quality 90."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        small = rng.integers(0, 255, (8, 10, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
        arr = np.asarray(img).astype(np.int16) + rng.integers(-12, 12, (height, width, 3))
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return paths


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_only(bb: fb.Backbone, batch: torch.Tensor, batch_size: int) -> float:
    _sync(bb.device)
    start = time.perf_counter()
    for i in range(0, batch.shape[0], batch_size):
        bb.encode_images(batch[i : i + batch_size]).cpu()
    _sync(bb.device)
    return time.perf_counter() - start


def end_to_end(
    bb: fb.Backbone, paths: list[str], store: Path, batch_size: int, num_workers: int
) -> float:
    start = time.perf_counter()
    res = extract(
        bb, paths, store=store, batch_size=batch_size, num_workers=num_workers, progress=False
    )
    _sync(bb.device)
    elapsed = time.perf_counter() - start
    assert res.n_encoded == len(paths)
    return elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="ViT-B-32", help="open_clip architecture (random weights)")
    p.add_argument("--n", type=int, default=384, help="number of JPEG files")
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="amp")
    p.add_argument("--repeats", type=int, default=2, help="alternating runs of each; median")
    args = p.parse_args()

    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    bb = fb.load(args.model, pretrained="random", device=device, precision=args.precision)
    with tempfile.TemporaryDirectory(prefix="fewclip-extract-speed-") as tmp:
        root = Path(tmp)
        (root / "jpeg").mkdir()
        paths = make_jpegs(root / "jpeg", args.n, args.width, args.height)
        batch = torch.stack([bb.eval_transform(decode_image(q)) for q in paths])
        if device.type == "cuda":
            batch = batch.pin_memory()
        bb.encode_images(batch[: args.batch_size])  # warm-up
        t_model, t_e2e = [], []
        for r in range(args.repeats):
            t_model.append(model_only(bb, batch, args.batch_size))
            t_e2e.append(
                end_to_end(bb, paths, root / f"store{r}", args.batch_size, args.num_workers)
            )
    m, e = statistics.median(t_model), statistics.median(t_e2e)
    rate_m, rate_e = args.n / m, args.n / e
    print(
        f"{args.model} (random weights), {args.n} JPEGs {args.width}x{args.height} → "
        f"{bb.image_size[0]}px, batch {args.batch_size}, workers {args.num_workers}, "
        f"precision {bb.compute_precision}"
    )
    print(
        table(
            ["pipeline", "seconds", "images/s"],
            [
                ["model only (decoded tensors)", f"{m:.2f}", f"{rate_m:.1f}"],
                ["end to end (JPEG → store)", f"{e:.2f}", f"{rate_e:.1f}"],
            ],
        )
    )
    ratio = rate_e / rate_m
    verdict = "meets" if ratio >= 0.85 else "MISSES"
    print(f"ratio end-to-end / model-only: {ratio:.3f} ({verdict} the 0.85 target)")
    print(f"peak RSS {peak_rss_gib():.2f} GiB")


if __name__ == "__main__":
    main()
