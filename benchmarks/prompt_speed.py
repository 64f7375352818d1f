"""CoOp training speed: steps per second, trimmed against full-context text forwards, and the
floor (one forward and backward of the text tower on the same prompts), in one run.

    python -m benchmarks.prompt_speed [--steps 3] [--backbones fewclip-tiny-vit,ViT-B-16]
                                      [--classes 100,1000]

For each backbone (random weights are enough to time it: ``--pretrained random`` for real
architectures) and class count C, a synthetic task with 2 shots per class and batch 32:

- **CoOp step, trimmed** (the default) and **full context** (``trim=False``): seconds per
  optimisation step (the C prompts through the tower, forward and backward, and the SGD update),
  from a fit of ``--steps`` steps, after one warm-up fit;
- **floor**: the tower alone, forward and backward of the same C trimmed prompts with respect to
  the context (what a step cannot avoid), timed the same way.

The ratio columns are full / trimmed (what trimming saves) and trimmed / floor (what CoOp adds
around the tower; goal ≤ 1.2).
"""

from __future__ import annotations

import argparse
import time

import torch

import fewclip.backbones as fb
from benchmarks._util import table
from fewclip.functional import l2_normalize
from fewclip.methods.coop import CoOp, PromptContext
from fewclip.task import FeatureSet, Task


def _task(backbone: fb.Backbone, classes: int, shots: int = 2) -> Task:
    g = torch.Generator().manual_seed(0)
    d = backbone.embed_dim
    labels = torch.arange(classes).repeat_interleave(shots)
    feats = torch.randn(classes, d, generator=g)[labels] + 0.5 * torch.randn(
        len(labels), d, generator=g
    )
    names = [f"class number {i}" for i in range(classes)]
    weights = l2_normalize(torch.randn(classes, d, generator=g))
    return Task(names, weights, FeatureSet(feats, labels), text_tower=backbone.text_tower())


def _step_seconds(task: Task, steps: int, trim: bool) -> float:
    n = task.support.n
    batch = 32
    epochs = max(1, -(-steps * batch // n))  # whole epochs covering at least `steps` steps
    per_epoch = max(1, n // batch)
    params = {"n_ctx": 16, "batch_size": batch, "warmup_epochs": 0, "trim": trim}
    CoOp(epochs=1, **params).fit(task)  # warm-up
    t0 = time.perf_counter()
    CoOp(epochs=epochs, **params).fit(task)
    return (time.perf_counter() - t0) / (epochs * per_epoch)


def _floor_seconds(task: Task, steps: int) -> float:
    tower = task.text_tower
    assert tower is not None
    prompts = PromptContext(tower, task.classnames, n_ctx=16, init="", position="end")
    ctx = torch.zeros(16, tower.width, requires_grad=True)
    tower.encode(prompts.assemble(ctx), prompts.eot).sum().backward()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        tower.encode(prompts.assemble(ctx), prompts.eot).sum().backward()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--backbones", default="fewclip-tiny-vit,ViT-B-16")
    ap.add_argument("--classes", default="100,1000")
    args = ap.parse_args()
    rows = []
    for name in args.backbones.split(","):
        pretrained = None if name.startswith("fewclip-tiny") else "random"
        backbone = fb.load(name, pretrained=pretrained)
        for classes in (int(c) for c in args.classes.split(",")):
            task = _task(backbone, classes)
            trimmed = _step_seconds(task, args.steps, trim=True)
            full = _step_seconds(task, args.steps, trim=False)
            floor = _floor_seconds(task, args.steps)
            rows.append(
                [name, str(classes), f"{trimmed:.3f}", f"{full:.3f}", f"{floor:.3f}",
                 f"{full / trimmed:.2f}x", f"{trimmed / floor:.2f}"]
            )  # fmt: skip
            print(f"{name} C={classes}: trimmed {trimmed:.3f} s/step", flush=True)
    print()
    print(f"CoOp, 16 context vectors, batch 32, {torch.get_num_threads()} threads, float32, CPU")
    header = ["backbone", "classes", "trimmed s/step", "full s/step", "floor s/step"]
    print(table([*header, "full / trimmed", "trimmed / floor"], rows))


if __name__ == "__main__":
    main()
