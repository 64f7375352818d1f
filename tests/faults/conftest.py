"""The fault-injection suite: each test damages one thing (a file, a process, the numbers),
records what fewclip did about it, and asserts that it was the right thing.

Outcomes recorded with :func:`fault_record` (one per injected fault):

- ``detected``: a clear ``FewclipError`` / one ``error:`` line naming what is wrong;
- ``repaired``: fewclip rebuilt what was damaged by itself and said so;
- ``correct``: the fault changed nothing a user could see (the result equals the clean one);
- ``traceback``: an unexpected exception or a traceback on the command line;
- ``silent``: a wrong or damaged result with no error (a silent wrong answer).

Each test also records the files it found lost or changed that it should not have (``lost``).
At the end of the run the table of outcomes per component is printed (the docs' reliability
page shows it with the command that produced it).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.faults._log import FAULTS, FaultLog


@pytest.fixture
def fault_record() -> FaultLog:
    """The session's fault log: ``fault_record.add(component, outcome, lost=0)``."""
    return FAULTS


#: ``sitecustomize`` for a child process: SIGKILL itself right before or right after the N-th
#: call of a function, named by FEWCLIP_TEST_KILL="module:Qualified.name:N:before|after".
KILL_HOOK = """
import importlib, os, signal

_spec = os.environ.get("FEWCLIP_TEST_KILL")
if _spec:
    _module, _name, _n, _when = _spec.split(":")
    _owner = importlib.import_module(_module)
    *_path, _leaf = _name.split(".")
    for _p in _path:
        _owner = getattr(_owner, _p)
    _real, _calls = getattr(_owner, _leaf), []

    def _wrapped(*args, **kwargs):
        _calls.append(1)
        if _when == "before" and len(_calls) == int(_n):
            os.kill(os.getpid(), signal.SIGKILL)
        out = _real(*args, **kwargs)
        if _when == "after" and len(_calls) == int(_n):
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    setattr(_owner, _leaf, _wrapped)
"""


def kill_env(folder: Path, target: str, n: int, when: str = "after") -> dict[str, str]:
    """Environment for ``run_fewclip(env=...)`` that makes the child SIGKILL itself before or
    after the ``n``-th call of ``target`` ("module:Qualified.name")."""
    import os

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(KILL_HOOK)
    path = os.pathsep.join(filter(None, (str(folder), os.environ.get("PYTHONPATH"))))
    return {"PYTHONPATH": path, "FEWCLIP_TEST_KILL": f"{target}:{n}:{when}"}


# -- ways to damage a file (shared by the file-fault tests) -------------------------------
def bitflip(p: Path, at: int | None = None) -> None:
    """One bit of the byte at ``at`` (default: the middle byte) flipped: e.g. '1' → '0'."""
    data = bytearray(p.read_bytes())
    data[len(data) // 2 if at is None else at] ^= 0x01
    p.write_bytes(bytes(data))


def truncate(p: Path) -> None:
    """The second half of the file cut off."""
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def empty(p: Path) -> None:
    p.write_bytes(b"")


def garbage(p: Path) -> None:
    """Random bytes of the same length."""
    import torch

    n = p.stat().st_size
    p.write_bytes(torch.randint(0, 256, (n,), dtype=torch.uint8).numpy().tobytes())


def delete(p: Path) -> None:
    p.unlink()
