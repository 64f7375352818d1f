"""The documented exit codes, through the installed `fewclip` command.

0, 1 and 2 are checked by most CLI tests; 3 (weights missing) by test_offline_backbone.py and
130 (interrupted) by test_interrupt_extract.py, both through the installed script. Here: 4
(adapter/backbone mismatch) and 70 (internal error), and a scan that every documented code is
asserted somewhere in tests/cli.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from .conftest import run_fewclip

HERE = Path(__file__).resolve().parent


def test_every_documented_exit_code_is_asserted_by_a_cli_test(tmp_path: Path) -> None:
    res = run_fewclip("--help", store=tmp_path / "store")
    assert res.returncode == 0, res.stderr
    said = " ".join(res.stdout.split())
    codes = [int(c) for c in re.findall(r"(\d+) [a-z]", said.split("Exit codes:")[1].split(".")[0])]
    assert codes == [0, 1, 2, 3, 4, 70, 130], said
    sources = "\n".join(p.read_text(encoding="utf-8") for p in HERE.glob("test_*.py"))
    untested = [c for c in codes if not re.search(rf"returncode == {c}\b", sources)]
    assert untested == []


def test_4_predict_with_another_backbone_than_the_adapters(
    opt_data: Path, opt_adapter: tuple[Path, Path, subprocess.CompletedProcess[str]]
) -> None:
    adapter, store, _ = opt_adapter  # fitted with fewclip-tiny-vit
    image = sorted((opt_data / "test").rglob("*.png"))[0]
    res = run_fewclip("predict", adapter, image, "-b", "fewclip-tiny-rn", store=store)
    assert res.returncode == 4, res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, res.stderr
    assert "different" in errors[0], res.stderr
    assert "Traceback" not in res.stderr
    assert res.stdout == ""


# fewclip has no switch that raises an internal error on purpose, and no environment hook
# for one. Python's own hook does it without touching the package: a sitecustomize module on
# PYTHONPATH, imported at interpreter start-up, breaks FeatureStore.keys in that process only.
BROKEN_STORE = """
import fewclip.features


def _keys(self):
    raise RuntimeError("injected by the test: a bug inside fewclip")


fewclip.features.FeatureStore.keys = _keys
"""


def test_70_an_internal_error_is_one_line_that_says_it_is_a_bug(tmp_path: Path) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(BROKEN_STORE)
    path = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH", "")) if p)
    env = {"PYTHONPATH": path}
    res = run_fewclip("cache", "info", "abc", store=tmp_path / "store", env=env)
    assert res.returncode == 70, res.stderr
    assert res.stderr.splitlines() == [
        "fewclip: internal error, a bug: RuntimeError: injected by the test: a bug inside "
        "fewclip. Please report it; run the command again with --debug before it for the "
        "traceback (fewclip --debug COMMAND ...)."
    ]
    assert res.stdout == ""
