"""Start-up of the `fewclip` command: how long `fewclip predict` on one image spends outside
the model itself.

Each figure is the median of ``--repeat`` fresh processes, all measured in this run:

- **python**: ``python -c pass`` (the interpreter alone);
- **import torch**: ``python -c "import torch"`` (the baseline of every figure below: the
  methods are torch code, so no command that fits or predicts can start faster);
- **fewclip --help**;
- **predict, total**: ``fewclip predict ADAPTER one.png`` with the tiny backbone, wall clock;
- **predict, model**: the part of that run inside the model: loading the backbone (open_clip
  and its imports, construction, weights) and encoding the image, timed inside the same
  process by wrapping ``Adapter.load_backbone`` and the feature extraction;
- **predict, outside the model**: total minus model, with and without importing torch
  (imported before the model loads, but the model cannot run without it). Target (issue 15):
  well under 2 s.

    python -m benchmarks.cli_startup
    python -m benchmarks.cli_startup --repeat 9
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._util import table

_INSTRUMENTED = r"""
import json, sys, time
t_start = time.perf_counter()
import torch
t_torch = time.perf_counter() - t_start
import fewclip.adapter as fa
from fewclip.cli import main

model = 0.0
def timed(fn):
    def wrapper(*a, **k):
        global model
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            model += time.perf_counter() - t
    return wrapper

fa.Adapter.load_backbone = timed(fa.Adapter.load_backbone)
fa.extract = timed(fa.extract)
code = main(sys.argv[1:])
total = time.perf_counter() - t_start
print(json.dumps({"code": code, "model": model, "torch": t_torch, "total": total}), file=sys.stderr)
"""


def _wall(cmd: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    t = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    return time.perf_counter() - t, res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5, help="Processes per figure (median).")
    args = ap.parse_args()

    exe = str(Path(sys.executable).parent / "fewclip")
    work = Path(tempfile.mkdtemp(prefix="fewclip-startup-"))
    env = {**os.environ, "FEWCLIP_STORE": str(work / "store"), "HF_HUB_OFFLINE": "1"}
    try:
        from fewclip.testing.images import make_shapes_dataset

        data = make_shapes_dataset(
            work / "data", classes=("red_circle", "blue_square"), per_class={"train": 6}
        )
        fit = [exe, "fit", "-m", "tip-adapter", "-d", str(data), "-b", "fewclip-tiny-vit"]
        res = subprocess.run([*fit, "-o", str(work / "ad"), "-q"], env=env, capture_output=True)
        if res.returncode:
            raise SystemExit(res.stderr)
        one = str(data / "train" / "red_circle" / "000.png")
        predict = ["predict", str(work / "ad"), one]

        py = [sys.executable, "-c", "pass"]
        torch_only = [sys.executable, "-c", "import torch"]
        figures: dict[str, list[float]] = {
            k: [] for k in ("python", "import torch", "fewclip --help", "total", "model", "torch")
        }
        for _ in range(args.repeat):
            figures["python"].append(_wall(py, env)[0])
            figures["import torch"].append(_wall(torch_only, env)[0])
            figures["fewclip --help"].append(_wall([exe, "--help"], env)[0])
            wall, res = _wall([exe, *predict], env)
            if res.returncode:
                raise SystemExit(res.stderr)
            figures["total"].append(wall)
            _, res = _wall([sys.executable, "-c", _INSTRUMENTED, *predict], env)
            inside = json.loads(res.stderr.strip().splitlines()[-1])
            figures["model"].append(inside["model"])
            figures["torch"].append(inside["torch"])
    finally:
        shutil.rmtree(work, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in figures.items()}
    med["outside"] = med["total"] - med["model"]
    med["outside_no_torch"] = med["outside"] - med["torch"]
    base = med["import torch"]
    rows = [
        ["python -c pass", med["python"]],
        ["python -c 'import torch' (baseline)", med["import torch"]],
        ["fewclip --help", med["fewclip --help"]],
        ["fewclip predict (1 image, tiny backbone): total", med["total"]],
        ["  in the model (load backbone + encode)", med["model"]],
        ["  outside the model, with importing torch", med["outside"]],
        ["    of which importing torch (the model needs it too)", med["torch"]],
        ["  outside the model and torch (target: well under 2 s)", med["outside_no_torch"]],
    ]
    print(
        table(
            ["what", "median s", "x baseline"],
            [[name, f"{s:.2f}", f"{s / base:.2f}"] for name, s in rows],
        )
    )
    print(f"\n{args.repeat} fresh processes each; python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
