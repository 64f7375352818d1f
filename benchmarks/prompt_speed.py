"""CoOp training speed: steps per second, trimmed against full-context text forwards, and the
floor (one forward and backward of the text tower on the same prompts), in one run.

    python -m benchmarks.prompt_speed [--steps 3] [--backbones fewclip-tiny-vit,ViT-B-16]
                                      [--classes 100,1000] [--threads N]

For each backbone (random weights are enough to time it: ``--pretrained random`` for real
architectures; ``ViT-B-16`` has CLIP ViT-B/16's text tower, 12 layers of width 512) and class
count C, CoOp with 16 context vectors and batch 32 (the reference's settings), on a support set
of synthetic image features (2 per class, more where C is small):

- **CoOp step**, trimmed (the default) and full context (``trim=False``): seconds of one
  optimisation step (the C prompts assembled and run through the tower, the loss, backward and
  the SGD update), timed around each of the first ``steps + 1`` steps of a fit (then stopped),
  the first step left out (warm-up), the fastest of the others (on a shared machine, the least
  disturbed); **steps/s** is its inverse. The fit's other work (tokenizing and embedding the C
  prompts once) is not in it.
- **floor**: the tower alone on the same C prompts, trimmed or full: assemble them, encode, and
  backward with respect to the context (what a step cannot avoid), the fastest of ``steps``
  runs after one warm-up run.
- **step / floor**: what CoOp adds around the tower (goal ≤ 1.2); **full / trimmed**: what
  trimming saves on the step.
- **peak MiB**: the peak resident memory of the floor and step runs above the memory once the
  model and the task are ready (Linux ``VmHWM``; each shape and context runs in a fresh
  process): the activations kept for the backward of the C prompts.
- **load**: the machine's 1-minute load average when the measurement started and ended (this
  run's own threads included). On a machine shared with other jobs, ``--threads`` below the
  core count keeps the timings usable: with as many threads as cores, one core taken by
  another job stalls every parallel region (measured on the 2-core machine: up to 100x).

``--steps`` takes one count for every class count or one per class count (``3,1``). A shape
whose memory need, extrapolated from the backbone's previous (smaller) shape, exceeds the
memory available on the machine is skipped and reported, not run into the OOM killer.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import torch

import fewclip.backbones as fb
from benchmarks._util import table
from fewclip.functional import l2_normalize
from fewclip.methods.coop import CoOp, PromptContext
from fewclip.task import FeatureSet, Task

N_CTX, BATCH = 16, 32


def _status_gib(key: str) -> float:
    """A ``/proc/self/status`` memory entry (``VmRSS``, ``VmHWM``) in GiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 2**20
    raise KeyError(key)


def _available_gib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    raise KeyError("MemAvailable")


def _measure_peak(run: Callable[[], Any]) -> tuple[Any, float]:
    """``run()`` and the peak resident memory during it above the memory before it (GiB)."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak resident memory (VmHWM) to the current one
    before = _status_gib("VmRSS")
    out = run()
    return out, _status_gib("VmHWM") - before


def _task(backbone: fb.Backbone, classes: int, steps: int) -> Task:
    """Synthetic image features, 2 per class or enough for ``steps + 1`` batches."""
    g = torch.Generator().manual_seed(0)
    d = backbone.embed_dim
    labels = torch.arange(classes).repeat(max(2, -(-BATCH * (steps + 1) // classes)))
    feats = torch.randn(classes, d, generator=g)[labels] + 0.5 * torch.randn(
        len(labels), d, generator=g
    )
    names = [f"class number {i}" for i in range(classes)]
    weights = l2_normalize(torch.randn(classes, d, generator=g))
    return Task(names, weights, FeatureSet(feats, labels), text_tower=backbone.text_tower())


class _Enough(Exception):
    """Raised from inside a fit once enough steps are timed."""


def _step_seconds(task: Task, steps: int, trim: bool) -> list[float]:
    """Seconds of the first ``steps + 1`` optimisation steps of a CoOp fit (the first one a
    warm-up); the fit is stopped after them."""
    coop = CoOp(n_ctx=N_CTX, batch_size=BATCH, epochs=1, warmup_epochs=0, trim=trim)
    if task.support.n < BATCH * (steps + 1):
        raise SystemExit(f"{task.n_classes} classes: too few support images for {steps} steps")
    times: list[float] = []
    step = coop._step

    def timed(*args: Any) -> None:
        t0 = time.perf_counter()
        step(*args)
        times.append(time.perf_counter() - t0)
        if len(times) > steps:
            raise _Enough

    coop._step = timed  # type: ignore[method-assign]
    with contextlib.suppress(_Enough):
        coop.fit(task)
    return times


def _floor_seconds(task: Task, steps: int, trim: bool) -> list[float]:
    """Seconds of the tower's forward and backward on the task's C prompts, ``steps + 1`` runs
    (the first one a warm-up)."""
    tower = task.text_tower
    assert tower is not None
    prompts = PromptContext(tower, task.classnames, n_ctx=N_CTX, init="", position="end")
    ctx = torch.zeros(N_CTX, tower.width, requires_grad=True)
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        tower.encode(prompts.assemble(ctx), prompts.eot, trim=trim).sum().backward()
        times.append(time.perf_counter() - t0)
    return times


def _cell(name: str, classes: int, steps: int, trim: bool, threads: int | None) -> dict:
    """One (backbone, C, context) measurement in a fresh process: the floor, then the CoOp
    steps, and the peak memory of both above the memory once the model and task are ready."""
    if threads is not None:
        torch.set_num_threads(threads)
    pretrained = None if name.startswith("fewclip-tiny") else "random"
    backbone = fb.load(name, pretrained=pretrained)
    task = _task(backbone, classes, steps)
    load = os.getloadavg()[0]
    (floor, step), peak = _measure_peak(
        lambda: (_floor_seconds(task, steps, trim), _step_seconds(task, steps, trim))
    )
    return {
        "floor": floor,
        "step": step,
        "peak_gib": peak,
        "threads": torch.get_num_threads(),
        "load": (load, os.getloadavg()[0]),
    }


def _prompt_length(name: str, classes: int) -> tuple[int, int]:
    """(trimmed, full) token count of the C prompts of the backbone's tower."""
    pretrained = None if name.startswith("fewclip-tiny") else "random"
    tower = fb.load(name, pretrained=pretrained).text_tower()
    names = [f"class number {i}" for i in range(classes)]
    prompts = PromptContext(tower, names, n_ctx=N_CTX, init="", position="end")
    return int(prompts.eot.max()) + 1, tower.context_length


def _steps_per_class(steps: str, classes: list[int]) -> list[int]:
    counts = [int(s) for s in steps.split(",")]
    if len(counts) == 1:
        counts = counts * len(classes)
    if len(counts) != len(classes) or min(counts) < 1:
        raise SystemExit(
            f"--steps: expected one count >= 1 or one per class count ({len(classes)}), "
            f"found {steps!r}"
        )
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", default="3", help="timed steps: one count, or one per --classes")
    ap.add_argument("--backbones", default="fewclip-tiny-vit,ViT-B-16")
    ap.add_argument("--classes", default="100,1000")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    classes = [int(c) for c in args.classes.split(",")]
    steps_for = dict(zip(classes, _steps_per_class(args.steps, classes), strict=True))
    spawn = multiprocessing.get_context("spawn")
    rows = []
    threads = None
    load_start = os.getloadavg()
    t_start = time.perf_counter()
    for name in args.backbones.split(","):
        gib_per_prompt_token: dict[bool, float] = {}  # from the previous shape, by context
        for c in sorted(classes):
            steps = steps_for[c]
            trimmed_len, full_len = _prompt_length(name, c)
            trimmed_step: float | None = None
            for trim in (True, False):
                mode = "trimmed" if trim else "full"
                length = trimmed_len if trim else full_len
                label = [name, str(c), mode, str(length)]
                need = gib_per_prompt_token.get(trim, 0.0) * c * length
                available = _available_gib()
                if need > 0.8 * available:
                    skipped = f"skipped: needs ~{need:.0f} GiB, {available:.0f} GiB available"
                    rows.append([*label, skipped, "", "", "", "", "", "", ""])
                    print(f"{name} C={c} {mode}: {skipped}", flush=True)
                    continue
                with ProcessPoolExecutor(1, mp_context=spawn) as pool:
                    r = pool.submit(_cell, name, c, steps, trim, args.threads).result()
                threads = r["threads"]
                peak = r["peak_gib"]
                gib_per_prompt_token[trim] = max(peak, 0.0) / (c * length)
                step_s = min(r["step"][1:])
                floor_s = min(r["floor"][1:])
                if trim:
                    trimmed_step = step_s
                saving = "" if trimmed_step is None or trim else f"{step_s / trimmed_step:.1f}x"
                rows.append(
                    [*label, f"{1 / step_s:.3g}", f"{step_s:.3g}", f"{floor_s:.3g}",
                     f"{step_s / floor_s:.2f}", saving, f"{peak * 1024:.0f}", str(steps),
                     "{:.1f}-{:.1f}".format(*r["load"])]
                )  # fmt: skip
                print(
                    f"{name} C={c} {mode} (L={length}): {step_s:.3f} s/step "
                    f"(floor {floor_s:.3f} s), peak +{peak:.2f} GiB; "
                    f"steps {[round(t, 3) for t in r['step']]}, "
                    f"floor {[round(t, 3) for t in r['floor']]}",
                    flush=True,
                )
    minutes = (time.perf_counter() - t_start) / 60
    print()
    print(
        f"CoOp, {N_CTX} context vectors, batch {BATCH}, float32, CPU, {threads} threads; "
        f"load average {load_start[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; "
        f"{minutes:.1f} min"
    )
    header = ["backbone", "classes", "context", "tokens L", "steps/s", "s/step", "floor s",
              "step / floor", "full / trimmed", "peak MiB", "timed steps", "load"]  # fmt: skip
    print(table(header, rows))


if __name__ == "__main__":
    main()
