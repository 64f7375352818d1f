"""Helpers for tests: synthetic CLIP-like feature worlds with the real benchmark sizes (the
calibrated presets: ``SyntheticWorld.from_preset``, measured by ``fewclip.testing.calibration``),
and the conformance suite every method passes (``check_method``, loaded on first use)."""

from typing import Any

from fewclip.testing.synthetic import (
    CALIBRATED,
    CLIP_RN50,
    PRESETS,
    DatasetShape,
    SyntheticWorld,
)

__all__ = [
    "CALIBRATED",
    "CLIP_RN50",
    "PRESETS",
    "DatasetShape",
    "SyntheticWorld",
    "check_method",
    "method_checks",
]


def __getattr__(name: str) -> Any:
    if name in ("check_method", "method_checks"):
        from fewclip.testing import conformance

        return getattr(conformance, name)
    raise AttributeError(f"module 'fewclip.testing' has no attribute {name!r}")
