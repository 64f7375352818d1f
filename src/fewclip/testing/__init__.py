"""Helpers for tests: synthetic CLIP-like feature worlds with the real benchmark sizes, and the
conformance suite every method passes (``check_method``, loaded on first use)."""

from typing import Any

from fewclip.testing.synthetic import PRESETS, DatasetShape, SyntheticWorld

__all__ = ["PRESETS", "DatasetShape", "SyntheticWorld", "check_method", "method_checks"]


def __getattr__(name: str) -> Any:
    if name in ("check_method", "method_checks"):
        from fewclip.testing import conformance

        return getattr(conformance, name)
    raise AttributeError(f"module 'fewclip.testing' has no attribute {name!r}")
