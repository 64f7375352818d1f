"""The documentation site builds with ``mkdocs build --strict``: a broken link, a missing page
in the navigation or an API reference to a name that no longer exists fails the suite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    try:
        import mkdocs  # noqa: F401
        import mkdocstrings  # noqa: F401
    except ImportError:  # the dev extra installs the docs tools; CI must not skip this
        pytest.fail("the docs tools are missing: pip install -e '.[docs]'")
    site = tmp_path / "site"
    res = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1", "HF_HUB_OFFLINE": "1"},
    )
    assert res.returncode == 0, res.stderr[-4000:]
    assert (site / "index.html").is_file()
    cli = (site / "cli" / "index.html").read_text()
    assert "fewclip fit" in cli
    assert "--skip-bad" in cli
    api = (site / "reference" / "api" / "index.html").read_text()
    assert "check_method" in api
    assert "fit_adapter" in api
    for figure in ("accuracy_vs_shots.svg", "per_class.svg"):
        assert (site / "assets" / "generated" / figure).is_file()  # made by fewclip at build
