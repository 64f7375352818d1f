"""`fewclip datasets check --no-files` through the installed command."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import run_fewclip
from .test_commands import _fake_dtd


def test_no_files_skips_the_check_that_listed_images_exist(tmp_path: Path) -> None:
    root = _fake_dtd(tmp_path / "data")  # 3 classes: never the published 47-class DTD
    (root / "dtd" / "images" / "banded" / "test_00.jpg").unlink()
    res = run_fewclip("datasets", "check", "dtd", "--root", root, "--json", store=tmp_path)
    (checked,) = json.loads(res.stdout)
    assert res.returncode == 1
    assert not checked["ok"]
    assert any("do not exist" in p and "banded/test_00.jpg" in p for p in checked["problems"])
    res = run_fewclip(
        "datasets", "check", "dtd", "--root", root, "--no-files", "--json", store=tmp_path
    )
    (unchecked,) = json.loads(res.stdout)
    assert res.returncode == 1
    assert not unchecked["ok"]
    assert not any("do not exist" in p for p in unchecked["problems"])
    assert unchecked["n_classes"] == 3
    assert unchecked["counts"] == {"train": 18, "val": 6, "test": 9}  # as listed, files unread
