"""`fewclip cache ls --kind|--orphans`, `cache verify`, `cache info --verify` and `cache gc` through
the installed command."""

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


def _copy_store(src: Path, dst: Path) -> FeatureStore:
    import shutil

    shutil.copytree(src, dst)
    return FeatureStore(dst)


def _flip_data_byte(store: FeatureStore, key: str) -> Path:
    shard = sorted((store.entry_dir(key) / "shards").glob("*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0x01  # inside the tensor data: sizes and headers stay valid
    shard.write_bytes(bytes(data))
    return shard


def test_verify_and_info_verify_exit_1_on_damage_and_name_the_remedy(
    opt_adapter: tuple[Path, Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    store = _copy_store(opt_adapter[1], tmp_path / "store")
    clean = run_fewclip("cache", "verify", store=store.root)
    assert clean.returncode == 0, clean.stderr
    n = len(store.keys())
    assert f"{n} entries checked, 0 damaged" in clean.stdout
    key = store.entries(kind="image")[0].key
    _flip_data_byte(store, key)
    for extra in ([], ["--sha256"]):
        res = run_fewclip("cache", "verify", *extra, store=store.root)
        assert res.returncode == 1, res.stderr
        assert f"damaged: {key[:12]}" in res.stdout
        assert f"{n} entries checked, 1 damaged" in res.stdout
        algo = "sha256" if extra else "xxh3"
        assert f"checksum mismatch (corrupt data: {algo} " in res.stdout
        assert f"fewclip cache rm {key[:12]}" in res.stderr
    res = run_fewclip("cache", "verify", key[:10], "--json", store=store.root)
    assert res.returncode == 1
    report = json.loads(res.stdout)
    assert report["checked"] == 1
    assert list(report["damaged"]) == [key]
    info = run_fewclip("cache", "info", key[:10], "--verify", store=store.root)
    assert info.returncode == 1
    assert json.loads(info.stdout)["problems"]
    assert f"fewclip cache rm {key[:12]}" in info.stderr
    quick = run_fewclip("cache", "info", key[:10], store=store.root)  # headers only: sound
    assert quick.returncode == 0
    assert json.loads(quick.stdout)["problems"] == []


def test_orphans_are_listed_and_removed_only_by_gc(
    opt_adapter: tuple[Path, Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    store = _copy_store(opt_adapter[1], tmp_path / "store")
    keys = store.keys()
    before = {p: p.read_bytes() for p in store.root.rglob("*") if p.is_file()}
    partial = store.root / "entries" / "ab" / ("ab" * 16) / "shards"
    partial.mkdir(parents=True)
    (partial / "00000.partial").write_bytes(b"x" * 100)
    trash = store.root / "trash" / "cd12.999"
    trash.mkdir(parents=True)
    (trash / "record.json").write_text("{}")
    res = run_fewclip("cache", "ls", "--orphans", store=store.root)
    assert res.returncode == 0, res.stderr
    assert "partial  abababababab" in res.stdout
    assert "left by a stopped run" in res.stdout
    assert "2 leftovers" in res.stdout
    listed = json.loads(run_fewclip("cache", "ls", "--orphans", "--json", store=store.root).stdout)
    assert sorted(x["kind"] for x in listed) == ["partial", "trash"]
    dry = run_fewclip("cache", "gc", "--dry-run", store=store.root)
    assert dry.returncode == 0
    assert "would remove partial abababababab" in dry.stdout
    assert (partial / "00000.partial").exists()
    refused = run_fewclip("cache", "gc", store=store.root)  # asks; no answer on stdin: aborts
    assert refused.returncode != 0
    assert (partial / "00000.partial").exists()
    res = run_fewclip("cache", "gc", "--yes", store=store.root)
    assert res.returncode == 0, res.stderr
    assert "removed 2 leftovers" in res.stdout
    assert not partial.parent.exists()
    assert not trash.exists()
    # every finished entry and file is as it was
    assert store.keys() == keys
    for p, data in before.items():
        assert p.read_bytes() == data, p
    assert "no leftovers" in run_fewclip("cache", "ls", "--orphans", store=store.root).stdout
