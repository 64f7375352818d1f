"""fewclip: adapt CLIP vision-language models to your classes from a few labelled images.

>>> import fewclip as fc
>>> world = fc.SyntheticWorld(10, 64, seed=0).calibrate(0.5)     # a toy feature world
>>> model = fc.create("tip-adapter").fit(world.task(4, seed=1))   # doctest: +SKIP
>>> model.predict(world.test_set().features)                        # doctest: +SKIP

The names below load on first use (PEP 562), so ``import fewclip`` imports no torch:

- features to predictions: :class:`Task`, :class:`FeatureSet`, :func:`create`, :func:`load`,
  :func:`available` (the methods, ``fewclip.methods``);
- images to features: :func:`load_backbone`, :func:`text_weights`, :func:`extract`;
- honest evaluation: :class:`Protocol`, :func:`evaluate`, :func:`run` (``fewclip.protocol``);
- a folder of images to a saved classifier: :class:`Adapter`, :func:`fit_adapter`;
- toy worlds for trying things out: :class:`SyntheticWorld`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fewclip._version import __version__

if TYPE_CHECKING:
    from fewclip.adapter import Adapter, fit_adapter
    from fewclip.backbones import load as load_backbone
    from fewclip.features import extract
    from fewclip.methods import available, create, load
    from fewclip.protocol import Protocol, evaluate, run
    from fewclip.task import FeatureSet, Task
    from fewclip.testing.synthetic import SyntheticWorld
    from fewclip.text import text_weights

#: Public name → (module, attribute) it is imported from on first access.
_LAZY: dict[str, tuple[str, str]] = {
    "Task": ("fewclip.task", "Task"),
    "FeatureSet": ("fewclip.task", "FeatureSet"),
    "create": ("fewclip.methods", "create"),
    "load": ("fewclip.methods", "load"),
    "available": ("fewclip.methods", "available"),
    "load_backbone": ("fewclip.backbones", "load"),
    "text_weights": ("fewclip.text", "text_weights"),
    "extract": ("fewclip.features", "extract"),
    "Protocol": ("fewclip.protocol", "Protocol"),
    "evaluate": ("fewclip.protocol", "evaluate"),
    "run": ("fewclip.protocol", "run"),
    "Adapter": ("fewclip.adapter", "Adapter"),
    "fit_adapter": ("fewclip.adapter", "fit_adapter"),
    "SyntheticWorld": ("fewclip.testing.synthetic", "SyntheticWorld"),
}

__all__ = [
    "Adapter",
    "FeatureSet",
    "Protocol",
    "SyntheticWorld",
    "Task",
    "__version__",
    "available",
    "create",
    "evaluate",
    "extract",
    "fit_adapter",
    "load",
    "load_backbone",
    "run",
    "text_weights",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'fewclip' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
