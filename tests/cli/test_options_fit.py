"""`fewclip fit` options that no other test passes, through the installed command: --prompts,
--device and --precision (with --seed, --views 0, --json and --quiet checked on the way)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from fewclip.features import FeatureStore

from .conftest import TINY_BACKBONE, run_fewclip


def test_quiet_prints_only_where_the_adapter_went(
    opt_adapter: tuple[Path, Path, subprocess.CompletedProcess[str]],
) -> None:
    adapter, _, res = opt_adapter  # fitted with -q
    assert res.stderr == ""  # no "using -k ..." choice, no toy-backbone note
    assert res.stdout == f"adapter written to {adapter.resolve()}\n"


def test_prompts_device_precision_seed_and_views_are_honoured_and_recorded(
    opt_data: Path,
    opt_adapter: tuple[Path, Path, subprocess.CompletedProcess[str]],
    tmp_path: Path,
) -> None:
    out, store = tmp_path / "adapter", tmp_path / "store"
    res = run_fewclip(
        "fit", "-m", "zero-shot", "-d", opt_data, "-k", "2", "-b", TINY_BACKBONE,
        "--seed", "7", "--views", "0", "--prompts", "imagenet-7", "--device", "cpu",
        "--precision", "bf16", "-o", out, "--json", store=store,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    printed = json.loads(res.stdout)  # --json: the adapter record, and nothing else on stdout
    saved = json.loads((out / "adapter.json").read_text())
    assert printed["adapter"] == str(out)
    saved_record = {k: v for k, v in saved.items() if k not in ("format", "checksums")}
    assert {k: v for k, v in printed.items() if k != "adapter"} == saved_record
    # --prompts imagenet-7: the 7-template ensemble instead of the default single template
    assert saved["prompts"]["name"] == "imagenet-7"
    assert len(saved["prompts"]["templates"]) == 7
    # --device cpu: the method ran there
    assert saved["params"]["device"] == "cpu"
    # --seed 7: another draw than seed 1 at the same shots and protocol
    first = json.loads((opt_adapter[0] / "adapter.json").read_text())
    assert saved["draw"]["seed"] == 7
    assert first["draw"]["seed"] == 1
    assert saved["protocol"] == first["protocol"]
    assert saved["draw"]["support"] != first["draw"]["support"]
    # --views 0: recorded, and no augmented view was extracted
    assert saved["views"] == 0
    entries = FeatureStore(store).entries()
    assert entries
    assert all(e.record.get("view", {}).get("type") != "augment" for e in entries)
    # --precision bf16: every feature was computed, and recorded, in bfloat16
    assert {e.record["precision"] for e in entries} == {"bf16"}
