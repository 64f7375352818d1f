"""The global options of the installed `fewclip` command (those before the command name)."""

from __future__ import annotations

from pathlib import Path

from fewclip._version import __version__

from .conftest import run_fewclip


def test_version_prints_the_version_and_runs_no_command(tmp_path: Path) -> None:
    res = run_fewclip("--version", store=tmp_path / "store")
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"fewclip {__version__}\n"
    assert res.stderr == ""
    # eager: it wins over a command and its (here missing) required options
    res = run_fewclip("--version", "fit", store=tmp_path / "store")
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"fewclip {__version__}\n"
    assert not (tmp_path / "store").exists()
