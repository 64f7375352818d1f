"""Every few-shot method behind one interface, registered by name.

>>> from fewclip import methods
>>> methods.available()  # doctest: +SKIP
['clip-adapter', 'linear-probe', 'tip-adapter', 'tip-adapter-f', 'zero-shot']
"""

from typing import TYPE_CHECKING, Any

from fewclip.methods.base import (
    BUILTIN_METHODS,
    Method,
    NewClassesError,
    NotFittedError,
    available,
    check_params,
    create,
    fit_seeds,
    get,
    load,
    register,
    resolve,
    run_params,
    seeds_batchable,
)

if TYPE_CHECKING:
    from fewclip.methods.ape import APE, APET
    from fewclip.methods.clap import CLAP, ZSLP
    from fewclip.methods.clip_adapter import CLIPAdapter
    from fewclip.methods.cocoop import CoCoOp
    from fewclip.methods.coop import CoOp
    from fewclip.methods.cross_modal_lp import CrossModalLP
    from fewclip.methods.gda import GDA
    from fewclip.methods.kgcoop import KgCoOp
    from fewclip.methods.linear_probe import LinearProbe
    from fewclip.methods.lp_pp import LPPlusPlus
    from fewclip.methods.prograd import ProGrad
    from fewclip.methods.proker import ProKeR
    from fewclip.methods.taskres import TaskRes
    from fewclip.methods.tip_adapter import TipAdapter, TipAdapterF
    from fewclip.methods.tip_x import TipX
    from fewclip.methods.zero_shot import ZeroShot

#: Class name → module: the classes load on first access (PEP 562), like the registry.
_CLASSES = {
    "APE": "ape",
    "APET": "ape",
    "CLAP": "clap",
    "ZSLP": "clap",
    "CLIPAdapter": "clip_adapter",
    "CoCoOp": "cocoop",
    "CoOp": "coop",
    "CrossModalLP": "cross_modal_lp",
    "GDA": "gda",
    "KgCoOp": "kgcoop",
    "LinearProbe": "linear_probe",
    "LPPlusPlus": "lp_pp",
    "ProGrad": "prograd",
    "ProKeR": "proker",
    "TaskRes": "taskres",
    "TipAdapter": "tip_adapter",
    "TipAdapterF": "tip_adapter",
    "TipX": "tip_x",
    "ZeroShot": "zero_shot",
}


def __getattr__(name: str) -> Any:
    if name in _CLASSES:
        import importlib

        return getattr(importlib.import_module(f"fewclip.methods.{_CLASSES[name]}"), name)
    raise AttributeError(f"module 'fewclip.methods' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "APE",
    "APET",
    "BUILTIN_METHODS",
    "CLAP",
    "GDA",
    "ZSLP",
    "CLIPAdapter",
    "CoCoOp",
    "CoOp",
    "CrossModalLP",
    "KgCoOp",
    "LPPlusPlus",
    "LinearProbe",
    "Method",
    "NewClassesError",
    "NotFittedError",
    "ProGrad",
    "ProKeR",
    "TaskRes",
    "TipAdapter",
    "TipAdapterF",
    "TipX",
    "ZeroShot",
    "available",
    "check_params",
    "create",
    "fit_seeds",
    "get",
    "load",
    "register",
    "resolve",
    "run_params",
    "seeds_batchable",
]
