"""Load on `fewclip serve`: throughput and latency under concurrent clients, with and without
dynamic batching, against fewclip's own batched prediction, all measured in one run.

    python -m benchmarks.serve_load [--backbone fewclip-tiny-vit] [--clients 16] [--seconds 10]
    python -m benchmarks.serve_load --backbone ViT-B-16 --pretrained random   # real-size model

Fits a Tip-Adapter on generated shapes with the backbone, then measures:

- **predict, batched (baseline)**: ``Adapter.predict_images`` in this process on every test
  image, batches of 32 (decode, preprocess, encode, classify): images per second;
- **fewclip predict (CLI)**: one fresh ``fewclip predict`` process on two images, wall clock
  (it loads the backbone each time);
- **serve, batching** (``--max-batch 32 --max-wait-ms 5``) and **serve, no batching**
  (``--max-batch 1``): ``--clients`` threads each send one image per request for ``--seconds``;
  images per second, p50 / p95 / p99 latency, failed requests, mean images per forward pass.

The ratio column is served throughput over the baseline's (goal: at least 0.8 on a real
backbone). The clients run on the same machine as the server and share its cores, so on a
small machine they take part of the throughput they measure.
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


def _wait_ready(client, proc, timeout: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if client.get("/ready").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit("the server did not become ready")


def load(url: str, payloads: list[bytes], clients: int, seconds: float) -> dict[str, float]:
    """``clients`` threads posting one image per request for ``seconds``."""
    import httpx

    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client(i: int) -> None:
        mine, bad = [], 0
        with httpx.Client(base_url=url, timeout=120) as c:
            start.wait()
            k = i
            while time.perf_counter() < stop_at[0]:
                files = [("files", ("x.png", payloads[k % len(payloads)], "image/png"))]
                t0 = time.perf_counter()
                try:
                    ok = c.post("/predict", files=files).status_code == 200
                except httpx.HTTPError:
                    ok = False
                mine.append(time.perf_counter() - t0)
                bad += not ok
                k += clients
        with lock:
            latencies.extend(mine)
            failures[0] += bad

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + seconds
    t0 = time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=100)
    return {
        "requests": len(latencies),
        "failed": failures[0],
        "images_per_s": (len(latencies) - failures[0]) / elapsed,
        "p50": q[49],
        "p95": q[94],
        "p99": q[98],
    }


def serve_and_load(adapter: Path, env: dict, extra: list[str], payloads, args) -> dict:
    import httpx

    port = "8799"
    proc = subprocess.Popen(
        [_exe(), "serve", adapter, "--port", port, "-q", *extra],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=120) as client:
            _wait_ready(client, proc)
            load(url, payloads, args.clients, 1.0)  # warm-up
            before = client.get("/metrics").text
            out = load(url, payloads, args.clients, args.seconds)
            after = client.get("/metrics").text
    finally:
        proc.terminate()
        proc.wait()
    batches = _metric(after, "fewclip_batch_size_count") - _metric(
        before, "fewclip_batch_size_count"
    )
    images = _metric(after, "fewclip_batch_size_sum") - _metric(before, "fewclip_batch_size_sum")
    out["mean_batch"] = images / max(batches, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="fewclip-tiny-vit")
    ap.add_argument(
        "--pretrained",
        default=None,
        help="weights for --backbone ('random': the architecture "
        "with random weights, which costs what the trained model costs)",
    )
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()

    from fewclip.adapter import Adapter
    from fewclip.testing.images import make_shapes_dataset

    tmp = Path(tempfile.mkdtemp(prefix="fewclip-serve-load-"))
    env = {**os.environ, "FEWCLIP_STORE": str(tmp / "store"), "HF_HUB_OFFLINE": "1"}
    data = make_shapes_dataset(
        tmp / "shapes",
        classes=("red_circle", "blue_square", "green_star"),
        per_class={"train": 8, "test": 64},
    )
    adapter = tmp / "adapter"
    subprocess.run(
        [_exe(), "fit", "-m", "tip-adapter", "-d", data, "-k", "4", "-b", args.backbone,
         *(["--pretrained", args.pretrained] if args.pretrained else []),
         "--views", "2", "-o", adapter, "-q"],
        check=True, env=env,
    )  # fmt: skip
    images = sorted((data / "test").rglob("*.png"))
    payloads = [p.read_bytes() for p in images]

    ad = Adapter.load(adapter)
    backbone = ad.load_backbone()
    ad.predict_images(backbone, [str(p) for p in images[:32]], progress=False)  # warm-up
    t0 = time.perf_counter()
    ad.predict_images(backbone, [str(p) for p in images], batch_size=32, progress=False)
    baseline = len(images) / (time.perf_counter() - t0)

    t0 = time.perf_counter()
    subprocess.run(
        [_exe(), "predict", adapter, *images[:2], "-q"], check=True, env=env, capture_output=True
    )
    cli = time.perf_counter() - t0

    batching = serve_and_load(
        adapter, env, ["--max-batch", "32", "--max-wait-ms", "5"], payloads, args
    )
    single = serve_and_load(adapter, env, ["--max-batch", "1"], payloads, args)

    def row(name: str, r: dict) -> list[str]:
        return [
            name,
            f"{r['images_per_s']:.0f}",
            f"{r['images_per_s'] / baseline:.2f}",
            f"{r['p50'] * 1000:.0f} / {r['p95'] * 1000:.0f} / {r['p99'] * 1000:.0f}",
            f"{r['failed']} of {r['requests']}",
            f"{r['mean_batch']:.1f}",
        ]

    weights = args.pretrained or "default"
    print(
        f"backbone {args.backbone} ({weights} weights), Tip-Adapter, {args.clients} clients "
        f"for {args.seconds:g} s, {os.cpu_count()} CPUs"
    )
    header = ["what", "images/s", "vs batched predict", "p50 / p95 / p99 ms", "failed", "batch"]
    rows = [
        ["predict, batched in-process (baseline)", f"{baseline:.0f}", "1.00", "-", "-", "32"],
        ["fewclip predict, 2 images (CLI)", f"{2 / cli:.2f}", f"{2 / cli / baseline:.3f}",
         f"{cli * 1000:.0f}", "-", "-"],
        row("serve, dynamic batching", batching),
        row("serve, no batching (--max-batch 1)", single),
    ]  # fmt: skip
    print(table(header, rows))


if __name__ == "__main__":
    main()
