"""The layer rule (DESIGN.md): the feature world imports nothing of the image world.

Checked in a fresh interpreter, after importing every feature-world module and looking up every
registered method, so that an import added anywhere in that closure makes this test fail.
"""

from __future__ import annotations

import json
import subprocess
import sys

FEATURE_WORLD = [
    "fewclip.functional",
    "fewclip.task",
    "fewclip.text_tower",
    "fewclip.sampling",
    "fewclip.protocol",
    "fewclip.generalisation",
    "fewclip.metrics",
    "fewclip.methods",
    "fewclip.bench.config",
    "fewclip.bench.results",
    "fewclip.bench.runner",
    "fewclip.bench.generalise",
    "fewclip.testing.synthetic",
    "fewclip.testing.calibration",
    "fewclip.testing.conformance",
]
IMAGE_WORLD = (
    "PIL",
    "torchvision",
    "open_clip",
    "transformers",
    "fewclip.backbones",
    "fewclip.data",
    "fewclip.features",
    "fewclip.imageio",
    "fewclip.adapter",
    "fewclip.prepare",
)


def test_feature_world_imports_nothing_of_the_image_world() -> None:
    code = (
        "import importlib, json, sys\n"
        f"for m in {FEATURE_WORLD!r}: importlib.import_module(m)\n"
        "from fewclip import methods\n"
        "for name in methods.available(): methods.get(name)\n"
        f"roots = {IMAGE_WORLD!r}\n"
        "bad = sorted(m for m in sys.modules\n"
        "             if any(m == r or m.startswith(r + '.') for r in roots))\n"
        "print(json.dumps(bad))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(res.stdout) == []


def test_the_old_sampling_path_still_works() -> None:
    from fewclip import sampling
    from fewclip.data import fewshot

    assert fewshot.sample_few_shot is sampling.sample_few_shot
    assert set(fewshot.__all__) == set(sampling.__all__)
