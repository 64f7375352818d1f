"""One rule for device names, shared by methods and backbones."""

from __future__ import annotations

import torch

from fewclip.errors import InvalidValueError


def resolve_device(spec: str | torch.device) -> torch.device:
    """``torch.device(spec)``, or an ``InvalidValueError`` naming the input when ``spec`` is not
    a device name or asks for CUDA on a machine where torch can use no CUDA GPU."""
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):
        raise InvalidValueError(
            f"device: expected 'cpu', 'cuda' or 'cuda:N', found {spec!r}"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidValueError(
            f"device: {str(spec)!r}, but torch can use no CUDA GPU on this machine; use 'cpu' "
            "(CLI: --device cpu)"
        )
    return device
