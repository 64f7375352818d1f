"""Tests of an optional extra skip, with the reason, when it is not installed, except under CI
(``FEWCLIP_REQUIRE_EXTRAS=1``, set by ``.ci/run``), where a missing extra fails the test."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


def require_extra(module: str, extra: str) -> ModuleType:
    """Import ``module`` or skip (fail under CI) naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        reason = f"{module} is not installed (the '{extra}' extra): pip install 'fewclip[{extra}]'"
        if os.environ.get("FEWCLIP_REQUIRE_EXTRAS") == "1":
            pytest.fail(f"{reason}; CI requires every extra")
        pytest.skip(reason)
