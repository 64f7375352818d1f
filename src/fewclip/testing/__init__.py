"""Helpers for tests: synthetic CLIP-like feature worlds with the real benchmark sizes."""

from fewclip.testing.synthetic import PRESETS, DatasetShape, SyntheticWorld

__all__ = ["PRESETS", "DatasetShape", "SyntheticWorld"]
