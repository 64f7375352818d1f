"""Every few-shot method behind one interface, registered by name.

>>> from fewclip import methods
>>> methods.available()  # doctest: +SKIP
['clip-adapter', 'linear-probe', 'tip-adapter', 'tip-adapter-f', 'zero-shot']
"""

from fewclip.methods.base import (
    Method,
    NotFittedError,
    available,
    create,
    get,
    load,
    register,
)
from fewclip.methods.clip_adapter import CLIPAdapter
from fewclip.methods.linear_probe import LinearProbe
from fewclip.methods.tip_adapter import TipAdapter, TipAdapterF
from fewclip.methods.zero_shot import ZeroShot

__all__ = [
    "CLIPAdapter",
    "LinearProbe",
    "Method",
    "NotFittedError",
    "TipAdapter",
    "TipAdapterF",
    "ZeroShot",
    "available",
    "create",
    "get",
    "load",
    "register",
]
