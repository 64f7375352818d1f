"""Classifying images through `fewclip serve` against `fewclip predict`, measured in one run.

    python -m benchmarks.serve_latency [--backbone fewclip-tiny-vit] [--requests 32]

Fits a Tip-Adapter on generated shapes with the backbone, then times, all in this run:

- **predict (baseline)**: ``fewclip predict ADAPTER a.png b.png`` in a fresh process, wall
  clock (it loads the backbone on every call), median of 3;
- **serve, one request**: one ``POST /predict`` with the same two images to a warm server,
  median of ``--requests`` sequential requests;
- **serve, concurrent**: ``--requests`` requests of one image each, sent at once from as many
  threads: the time until all have answered, per image, and the server's mean batch size.

Ratios are against the baseline. The server is the installed ``fewclip serve`` on 127.0.0.1
(``--max-wait-ms 5``, ``--max-batch 32``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks._util import table


def _exe() -> str:
    return str(Path(sys.executable).parent / "fewclip")


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="fewclip-tiny-vit")
    ap.add_argument("--requests", type=int, default=32)
    args = ap.parse_args()
    import httpx

    from fewclip.testing.images import make_shapes_dataset

    tmp = Path(tempfile.mkdtemp(prefix="fewclip-serve-bench-"))
    env = {**os.environ, "FEWCLIP_STORE": str(tmp / "store"), "HF_HUB_OFFLINE": "1"}
    data = make_shapes_dataset(
        tmp / "shapes",
        classes=("red_circle", "blue_square", "green_star"),
        per_class={"train": 8, "test": 4},
    )
    adapter = tmp / "adapter"
    subprocess.run(
        [_exe(), "fit", "-m", "tip-adapter", "-d", data, "-k", "4", "-b", args.backbone,
         "--views", "2", "-o", adapter, "-q"],
        check=True, env=env,
    )  # fmt: skip
    images = sorted((data / "test").rglob("*.png"))
    two = images[:2]

    cold = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run(
            [_exe(), "predict", adapter, *two, "-q"], check=True, env=env, capture_output=True
        )
        cold.append(time.perf_counter() - t0)
    baseline = statistics.median(cold)

    port = "8799"
    server = subprocess.Popen(
        [_exe(), "serve", adapter, "--port", port, "-q"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=120) as client:
            deadline = time.monotonic() + 300
            while True:
                try:
                    if client.get("/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("the server did not become ready")
                time.sleep(0.1)
            files = [("files", (p.name, p.read_bytes(), "image/png")) for p in two]
            one = []
            for _ in range(args.requests):
                t0 = time.perf_counter()
                client.post("/predict", files=files).raise_for_status()
                one.append(time.perf_counter() - t0)
            before = client.get("/metrics").text
            payloads = [images[i % len(images)].read_bytes() for i in range(args.requests)]
            barrier = threading.Barrier(args.requests + 1)

            def post(i: int) -> None:
                with httpx.Client(base_url=url, timeout=120) as c:
                    barrier.wait()
                    c.post("/predict", files=[("files", ("x.png", payloads[i], "image/png"))])

            threads = [threading.Thread(target=post, args=(i,)) for i in range(args.requests)]
            for t in threads:
                t.start()
            barrier.wait()
            t0 = time.perf_counter()
            for t in threads:
                t.join()
            burst = time.perf_counter() - t0
            after = client.get("/metrics").text
    finally:
        server.terminate()
        server.wait()
    n_batches = _metric(after, "fewclip_batch_size_count") - _metric(
        before, "fewclip_batch_size_count"
    )
    n_images = _metric(after, "fewclip_batch_size_sum") - _metric(before, "fewclip_batch_size_sum")
    single = statistics.median(one)
    rows = [
        ["predict, 2 images (baseline)", f"{baseline * 1000:.0f} ms", "1.0x", "-"],
        [
            "serve, 1 request of 2 images",
            f"{single * 1000:.1f} ms",
            f"{baseline / single:.0f}x",
            "-",
        ],
        [
            f"serve, {args.requests} concurrent requests",
            f"{burst * 1000:.0f} ms ({burst / args.requests * 1000:.1f} ms/image)",
            f"{baseline / 2 / (burst / args.requests):.0f}x per image",
            f"{n_images / max(n_batches, 1):.1f}",
        ],
    ]
    print(f"backbone {args.backbone}, Tip-Adapter, {os.cpu_count()} CPUs")
    print(table(["what", "time", "vs predict", "mean batch"], rows))


if __name__ == "__main__":
    main()
