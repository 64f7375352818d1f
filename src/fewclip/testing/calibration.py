"""Published CLIP RN50 few-shot numbers, and how a synthetic world is measured against them.

The calibrated presets (``SyntheticWorld.from_preset(name)``) are fitted on two numbers per
dataset, ``TARGETS[name] = (zero-shot, 16-shot Tip-Adapter)``, both in percent. Everything
else in ``PUBLISHED`` (Tip-Adapter at 1–8 shots, Tip-Adapter-F, CLIP-Adapter, the linear probe)
is left free and only compared with (``scripts/world_curves.py``, docs/benchmarks.md).

Sources (all CLIP RN50, seed 1, CoOp splits and prompts), as stored in
``fewclip.reproduce.PAPER``:

- ImageNet: Tip-Adapter paper (Zhang et al., ECCV 2022, arXiv 2207.09519) Table 2: zero-shot
  (7-template ensemble), linear probe, CLIP-Adapter, Tip-Adapter, Tip-Adapter-F at 1/2/4/8/16
  shots (``exp.log`` has 60.32 and 62.01 for zero-shot and 16-shot Tip-Adapter).
- The other 10 datasets: ``exp.log`` of github.com/gaopengcuhk/Tip-Adapter (commit
  30d25981df00b91d80d2f6bcc15a2c062a966a10), the numbers behind the paper's Fig. 4/5 (its Fig. 8
  gains match them exactly): zero-shot, Tip-Adapter, Tip-Adapter-F and CLIP-Adapter. Their
  linear-probe numbers exist only as plots (CoOp and CLIP-Adapter papers).

The published protocol: (β, α) and Tip-Adapter-F's epoch searched on the full CoOp validation
split for the 10 datasets that have one, and on the test set for ImageNet. A world is measured
with ``validation_rule(name)``: the full validation split where the preset has one, and a
few-shot validation set drawn from train (min(K, 4) images a class) for ImageNet, which has
none: the published ImageNet numbers are tuned on test, which fewclip never does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from fewclip.errors import NotFoundError
from fewclip.functional import l2_normalize
from fewclip.reproduce import PAPER
from fewclip.task import FeatureSet
from fewclip.testing.synthetic import PRESETS, SyntheticWorld

__all__ = [
    "PUBLISHED",
    "SHOTS",
    "TARGETS",
    "evaluate",
    "method_params",
    "nearest_neighbour_accuracy",
    "validation_rule",
    "zero_shot_confidence",
]

#: Shot counts of every published curve.
SHOTS = (1, 2, 4, 8, 16)

#: ``PRESETS`` names → the dataset names of ``fewclip.reproduce.PAPER`` and the bench presets.
_BENCH_NAMES = {"fgvc": "fgvc_aircraft"}


def _published(name: str) -> dict[str, Any]:
    paper = PAPER[_BENCH_NAMES.get(name, name)]
    out: dict[str, Any] = {"zero-shot": paper["zero-shot"][16]}
    for method, curve in paper.items():
        if method != "zero-shot":
            out[method] = tuple(curve[k] for k in SHOTS)
    return out


#: Published top-1 accuracies (percent) per preset, from ``fewclip.reproduce.PAPER``:
#: ``zero-shot`` (a number) and curves over ``SHOTS`` for ``tip-adapter``, ``tip-adapter-f``,
#: ``clip-adapter`` and, for ImageNet only, ``linear-probe``.
PUBLISHED: Mapping[str, Mapping[str, Any]] = {name: _published(name) for name in PRESETS}

#: The two calibration targets of each preset: (zero-shot, Tip-Adapter at 16 shots), percent.
TARGETS: Mapping[str, tuple[float, float]] = {
    name: (float(p["zero-shot"]), float(p["tip-adapter"][-1])) for name, p in PUBLISHED.items()
}


def validation_rule(name: str) -> str:
    """``"full"`` (the whole CoOp validation split) where preset ``name`` has one, else
    ``"fewshot"`` (min(K, 4) images a class drawn from train: ImageNet)."""
    if name not in PRESETS:
        raise NotFoundError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}")
    return "full" if PRESETS[name].val > 0 else "fewshot"


def method_params(name: str, method: str) -> dict[str, Any]:
    """Hyper-parameters of ``method`` on preset ``name`` in the ``tip-adapter`` bench preset
    (the reference configs: Tip-Adapter's per-dataset search ranges and initial α,
    Tip-Adapter-F's 100 EuroSAT epochs, CLIP-Adapter's 50 ImageNet epochs)."""
    from fewclip.bench.config import load_config

    return load_config("tip-adapter").method_params(method, _BENCH_NAMES.get(name, name))


def evaluate(
    world: SyntheticWorld,
    method: str,
    shots: int,
    *,
    seed: int = 1,
    views: int = 10,
    test: FeatureSet | None = None,
    params: Mapping[str, Any] | None = None,
) -> float:
    """Test accuracy (percent) of ``method`` fitted on ``world.task(shots, seed=seed,
    views=views, val=validation_rule(world.name))`` with ``method_params(world.name, method)``
    updated by ``params``. ``test``: the world's test set, if already generated."""
    from fewclip import methods

    kw = {**method_params(world.name, method), **(params or {})}
    task = world.task(shots, seed=seed, views=views, val=validation_rule(world.name))
    fitted = methods.create(method, **kw).fit(task)
    fs = test if test is not None else world.test_set()
    return 100.0 * fitted.score(fs.features, fs.labels)


def nearest_neighbour_accuracy(
    world: SyntheticWorld, shots: int = 1, *, seed: int = 1, test: FeatureSet | None = None
) -> float:
    """Test accuracy (percent) of the cosine 1-nearest-neighbour rule over ``shots`` support
    images a class (plain features, no text)."""
    support = world.support(shots, seed=seed, views=0)
    fs = test if test is not None else world.test_set()
    keys = l2_normalize(support.features)
    pred = torch.cat(
        [support.labels[(l2_normalize(x) @ keys.T).argmax(1)] for x in fs.features.split(8192)]
    )
    return 100.0 * float((pred == fs.labels).float().mean())


def zero_shot_confidence(world: SyntheticWorld, test: FeatureSet | None = None) -> float:
    """Mean largest zero-shot softmax probability (percent) of ``100·x·Wᵀ`` on the test set."""
    fs = test if test is not None else world.test_set()
    w = world.text_weights.double()
    conf = [
        torch.softmax(100.0 * l2_normalize(x.double()) @ w.T, dim=1).amax(1)
        for x in fs.features.split(8192)
    ]
    return 100.0 * float(torch.cat(conf).mean())
