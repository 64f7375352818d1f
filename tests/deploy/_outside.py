"""Run Python code in a fresh interpreter that cannot import fewclip (as on a machine where only
onnxruntime, or only torch, is installed); shared by the export tests."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

BLOCK_FEWCLIP = textwrap.dedent(
    """
    import importlib.abc, sys

    class _NoFewclip(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "fewclip" or name.startswith("fewclip."):
                raise ImportError("fewclip cannot be imported in this process")
            return None

    sys.meta_path.insert(0, _NoFewclip())
    try:
        import fewclip  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("fewclip is importable: the test would prove nothing")
    """
)


def run_outside(code: str, cwd: Path, timeout: float = 120) -> str:
    """stdout of ``code`` run with fewclip blocked; fails the test on a non-zero exit."""
    script = cwd / "outside_fewclip.py"
    script.write_text(BLOCK_FEWCLIP + "\n" + textwrap.dedent(code))
    res = subprocess.run(
        [sys.executable, "-I", str(script)], capture_output=True, text=True, cwd=cwd,
        timeout=timeout,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout
