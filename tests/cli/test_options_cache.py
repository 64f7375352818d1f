"""`fewclip cache ls --kind` through the installed command."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from fewclip.features import FeatureStore

from .conftest import run_fewclip


def test_kind_lists_only_entries_of_that_kind(
    opt_adapter: tuple[Path, Path, subprocess.CompletedProcess[str]],
) -> None:
    store = opt_adapter[1]  # fitting wrote text (the class prompts) and image entries
    kinds = {e.key: e.kind for e in FeatureStore(store).entries()}
    assert set(kinds.values()) == {"image", "text"}
    res = run_fewclip("cache", "ls", "--kind", "text", "--json", store=store)
    assert res.returncode == 0, res.stderr
    listed = json.loads(res.stdout)
    assert listed
    assert {e["kind"] for e in listed} == {"text"}
    assert sorted(e["key"] for e in listed) == sorted(k for k, v in kinds.items() if v == "text")
