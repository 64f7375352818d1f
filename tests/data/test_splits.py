"""Split JSON records of few-shot draws."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fewclip.data import (
    SPLIT_FORMAT,
    DatasetError,
    load_benchmark,
    plan_dataset,
    read_split,
    resolve_split,
    save_plan,
    write_split,
)


def test_roundtrip_and_resolve(fake_data: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    root, _ = fake_data
    ds = load_benchmark("caltech101", root)
    plan = plan_dataset("fewshot-val", ds, shots=2, seed=1)
    out = save_plan(plan, tmp_path / "draws" / "caltech101_2shot_seed1.json", ds)
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary files left
    rec = read_split(out)
    assert rec["format"] == SPLIT_FORMAT
    assert rec["dataset"] == "caltech101"
    assert rec["protocol"] == "fewshot-val"
    assert rec["leaky"] is False
    assert rec["shots"] == 2
    assert rec["seed"] == 1
    assert rec["classnames"] == list(ds.classnames)
    sup = rec["parts"]["support"]
    assert sup["split"] == "train"
    assert sup["fingerprint"] == ds.train.fingerprint()
    assert sup["items"][0] == [
        ds.train.paths[sup["indices"][0]],
        ds.train.labels[sup["indices"][0]],
    ]
    assert rec["parts"]["test"] == {
        "split": "test",
        "n_split": len(ds.test),
        "fingerprint": ds.test.fingerprint(),
    }
    support = resolve_split(rec, ds, "support")
    assert support is not None
    assert len(support) == 2 * ds.n_classes
    assert support.paths == tuple(ds.train.paths[i] for i in plan.support.indices or ())
    val = resolve_split(rec, ds, "val")
    assert val is not None
    assert not set(val.paths) & set(support.paths)
    assert resolve_split(rec, ds, "test") is ds.test
    # val-free has no val part
    free = plan_dataset("val-free", ds, shots=1, seed=2)
    rec2 = read_split(save_plan(free, tmp_path / "free.json", ds))
    assert rec2["parts"]["val"] is None
    assert resolve_split(rec2, ds, "val") is None


def test_resolve_detects_a_changed_dataset(fresh_data: Any, tmp_path: Path) -> None:
    root, _ = fresh_data("dtd")
    ds = load_benchmark("dtd", root)
    rec = read_split(
        write_split(
            tmp_path / "s.json",
            ds,
            {"support": ("train", [0, 5])},
            shots=1,
            seed=1,
            protocol="val-free",
        )
    )
    p = root / "dtd" / "split_zhou_DescribableTextures.json"
    data = json.loads(p.read_text())
    data["train"][0], data["train"][3] = data["train"][3], data["train"][0]
    p.write_text(json.dumps(data))
    changed = load_benchmark("dtd", root)
    with pytest.raises(
        DatasetError, match="entry 0: index 0 .* the dataset changed since the draw"
    ):
        resolve_split(rec, changed, "support")


def test_read_split_errors(tmp_path: Path) -> None:
    p = tmp_path / "s.json"
    p.write_text(json.dumps({"format": "other"}))
    with pytest.raises(DatasetError, match="expected format 'fewclip.split/1'"):
        read_split(p)
    base = {
        "format": SPLIT_FORMAT,
        "dataset": "x",
        "protocol": "val-free",
        "shots": 1,
        "seed": 1,
        "classnames": ["a"],
    }
    p.write_text(json.dumps(base))
    with pytest.raises(DatasetError, match="missing field 'parts'"):
        read_split(p)
    bad = {**base, "parts": {"support": {"split": "train", "indices": [0], "items": [["../x", 0]]}}}
    p.write_text(json.dumps(bad))
    with pytest.raises(DatasetError, match=r"parts.support.items\[0\]: path '../x' escapes"):
        read_split(p)
    bad["parts"]["support"]["items"] = [["x.jpg", 3]]  # type: ignore[index]
    p.write_text(json.dumps(bad))
    with pytest.raises(DatasetError, match=r"label 3 outside \[0, 1\)"):
        read_split(p)
    with pytest.raises(DatasetError, match="split file not found"):
        read_split(tmp_path / "none.json")


def test_write_split_rejects_bad_indices(
    fake_data: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    root, _ = fake_data
    ds = load_benchmark("eurosat", root)
    with pytest.raises(IndexError, match="out of range"):
        write_split(
            tmp_path / "s.json",
            ds,
            {"support": ("train", [999])},
            shots=1,
            seed=1,
            protocol="val-free",
        )
    assert not (tmp_path / "s.json").exists()
