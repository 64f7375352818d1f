"""Worker faults on demand, for tests of retrying executors: the first process (of any number,
on any machine sharing the folder) to reach a *gate* announces its process id and stops there
until it is killed; every later arrival passes. A test waits for the announcement, kills that
process by its id, and checks that the work was finished elsewhere, once.

- :func:`hold_once` is the gate itself;
- :func:`hold_on_encode` puts a gate in front of a backbone's ``encode_images``;
- :class:`HeldSource` puts one in front of a feature source's ``features``.

Both wrappers pickle (they travel to Ray workers with what they wrap).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from fewclip.errors import FewclipError

__all__ = ["GateTimeout", "HeldSource", "hold_on_encode", "hold_once", "wait_for_holder"]


class GateTimeout(FewclipError, TimeoutError):
    """A gate waited too long: nobody reached it, or nobody killed the process it held."""


#: How long a held process waits to be killed before it gives up (and fails loudly).
HOLD_LIMIT_S = 300.0


def hold_once(gate: str | os.PathLike[str]) -> None:
    """The first caller creates ``gate`` with its pid and blocks (until killed, at most
    :data:`HOLD_LIMIT_S`, then raises); any caller after that returns at once."""
    try:
        fd = os.open(gate, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(fd, f"{os.getpid()}\n".encode())
    os.fsync(fd)
    os.close(fd)
    deadline = time.monotonic() + HOLD_LIMIT_S
    while time.monotonic() < deadline:
        time.sleep(0.2)
    raise GateTimeout(f"{gate}: held for {HOLD_LIMIT_S:.0f} s and nobody killed this process")


def wait_for_holder(gate: str | os.PathLike[str], timeout: float = 120.0) -> int:
    """The pid written to ``gate`` by the process :func:`hold_once` holds (waits for it)."""
    path = Path(gate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text() if path.is_file() else ""
        if text.endswith("\n"):
            return int(text)
        time.sleep(0.05)
    raise GateTimeout(f"{gate}: no process reached the gate within {timeout:.0f} s")


class _HeldEncode:
    def __init__(self, gate: str, backbone: Any) -> None:
        self.gate = gate
        self.backbone = backbone

    def __call__(self, batch: Tensor) -> Tensor:
        hold_once(self.gate)
        out: Tensor = type(self.backbone).encode_images(self.backbone, batch)
        return out


def hold_on_encode(backbone: Any, gate: str | os.PathLike[str]) -> Any:
    """``backbone`` (changed in place and returned) whose first ``encode_images`` call, in any
    process, holds at ``gate``."""
    backbone.encode_images = _HeldEncode(os.fspath(gate), backbone)
    return backbone


class HeldSource:
    """A feature source whose first ``features`` call, in any process, holds at ``gate``;
    everything else is ``source``'s."""

    def __init__(self, source: Any, gate: str | os.PathLike[str]) -> None:
        self.source = source
        self.gate = os.fspath(gate)

    def __getattr__(self, name: str) -> Any:
        if name in ("source", "gate"):  # not set yet (while unpickling)
            raise AttributeError(name)
        return getattr(self.source, name)

    def splits(self) -> list[str]:
        return list(self.source.splits())

    def labels(self, split: str) -> Any:
        return self.source.labels(split)

    def features(
        self, split: str, index: Sequence[int] | None = None, *, views: bool = False
    ) -> Any:
        hold_once(self.gate)
        return self.source.features(split, index, views=views)
