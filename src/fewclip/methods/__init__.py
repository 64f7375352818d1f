"""Every few-shot method behind one interface, registered by name.

>>> from fewclip import methods
>>> methods.available()  # doctest: +SKIP
['clip-adapter', 'linear-probe', 'tip-adapter', 'tip-adapter-f', 'zero-shot']
"""

from fewclip.methods.ape import APE, APET
from fewclip.methods.base import (
    Method,
    NotFittedError,
    available,
    check_params,
    create,
    get,
    load,
    register,
    resolve,
    run_params,
)
from fewclip.methods.clap import CLAP, ZSLP
from fewclip.methods.clip_adapter import CLIPAdapter
from fewclip.methods.cross_modal_lp import CrossModalLP
from fewclip.methods.gda import GDA
from fewclip.methods.linear_probe import LinearProbe
from fewclip.methods.lp_pp import LPPlusPlus
from fewclip.methods.proker import ProKeR
from fewclip.methods.taskres import TaskRes
from fewclip.methods.tip_adapter import TipAdapter, TipAdapterF
from fewclip.methods.tip_x import TipX
from fewclip.methods.zero_shot import ZeroShot

__all__ = [
    "APE",
    "APET",
    "CLAP",
    "GDA",
    "ZSLP",
    "CLIPAdapter",
    "CrossModalLP",
    "LPPlusPlus",
    "LinearProbe",
    "Method",
    "NotFittedError",
    "ProKeR",
    "TaskRes",
    "TipAdapter",
    "TipAdapterF",
    "TipX",
    "ZeroShot",
    "available",
    "check_params",
    "create",
    "get",
    "load",
    "register",
    "resolve",
    "run_params",
]
