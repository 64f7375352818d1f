"""Atomic file writes, shared by every module that writes (one copy for the whole package).

``atomic_write(path, data)`` writes to a temporary sibling, flushes and fsyncs it, gives it the
permissions a plain ``open(path, "w")`` would (``0o666`` minus the umask, where ``mkstemp``
would leave ``0o600``), then renames it over ``path``: a reader sees the old file or the whole
new one, never a part. On any failure the temporary file is removed and ``path`` is untouched.
This module knows neither images nor methods.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write", "file_mode"]


def _read_umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no /proc: read it by setting it (once, at import)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def file_mode() -> int:
    """The permissions a newly created file gets under this process's umask."""
    return 0o666 & ~_UMASK


def atomic_write(path: str | os.PathLike[str], data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically; returns ``path``."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return p
