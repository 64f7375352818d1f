"""fewclip: few-shot adaptation of CLIP models on cached features."""

from fewclip._version import __version__

__all__ = ["__version__"]
