"""One rule for device names, shared by methods and backbones."""

from __future__ import annotations

import torch

from fewclip.errors import InvalidValueError


def resolve_device(spec: str | torch.device) -> torch.device:
    """``torch.device(spec)``, or an ``InvalidValueError`` naming the input when ``spec`` is not
    a device name, asks for CUDA on a machine where torch can use no CUDA GPU, or names a CUDA
    device the machine does not have."""
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):
        raise InvalidValueError(
            f"device: expected 'cpu', 'cuda' or 'cuda:N', found {spec!r}"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidValueError(
                f"device: {str(spec)!r}, but torch can use no CUDA GPU on this machine; use "
                "'cpu' (CLI: --device cpu)"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InvalidValueError(
                f"device: {str(spec)!r}, but this machine has {torch.cuda.device_count()} "
                "CUDA device(s)"
            )
    return device
