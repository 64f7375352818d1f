"""The feature store's Python API: list, inspect, load (rows, mmap), delete, write checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import fewclip.backbones as fb
from fewclip.errors import NotFoundError
from fewclip.features import CorruptEntryError, FeatureStore, entry_key, extract
from fewclip.imageio import BadImage


def _write(store: FeatureStore, record: dict, x: torch.Tensor, shard_size: int = 4) -> str:
    key = entry_key(record)
    with store.lock([key]):
        w = store.writer(
            key,
            record,
            n_rows=x.shape[0],
            dim=x.shape[1],
            shard_size=shard_size,
            dtype=x.dtype,
            meta={"note": "test"},
        )
        for s in range(w.n_shards):
            a, b = w.shard_range(s)
            w.write_shard(s, x[a:b], [(a, BadImage("/x.jpg", "empty file"))] if s == 1 else [])
        w.finalize()
    return key


def test_write_list_inspect_load_delete(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path)
    x = torch.randn(10, 5)
    key = _write(store, {"kind": "image", "split": "train"}, x)
    key2 = _write(store, {"kind": "image", "split": "test"}, torch.randn(3, 5))
    assert sorted(store.keys()) == sorted([key, key2])
    assert [e.key for e in store.entries(split="train")] == [key]
    info = store.info(key)
    assert (info.n_rows, info.dim, info.dtype, info.n_shards) == (10, 5, "F32", 3)
    assert info.record == {"kind": "image", "split": "train"}
    assert info.meta == {"note": "test"}
    assert info.bad_files == [(4, BadImage("/x.jpg", "empty file"))]
    assert info.nbytes > 10 * 5 * 4
    assert store.size_bytes() >= info.nbytes
    assert torch.equal(store.load(key), x)
    assert torch.equal(store.load(key, mmap=False), x)
    assert torch.equal(store.load(key, rows=[9, 0, 5, 5]), x[[9, 0, 5, 5]])
    assert torch.equal(torch.cat([t for _, t in store.iter_shards(key)]), x)
    with pytest.raises(IndexError, match="rows"):
        store.load(key, rows=[10])
    store.delete(key)
    assert store.keys() == [key2]
    with pytest.raises(NotFoundError, match=f"key: no complete entry '{key}'"):
        store.info(key)
    with pytest.raises(NotFoundError, match=f"key: no entry '{key}'"):
        store.delete(key)


def _mapped_file(t: torch.Tensor) -> str | None:
    """The file whose memory mapping holds the data of ``t`` (per /proc/self/maps), or None
    when the data lies in anonymous memory."""
    ptr = t.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        lo, hi = (int(a, 16) for a in fields[0].split("-"))
        if lo <= ptr < hi:
            return fields[5] if len(fields) == 6 and fields[5].startswith("/") else None
    return None


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="reads Linux's /proc/self/maps")
def test_single_shard_is_memory_mapped_and_half_precision(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path)
    x = torch.randn(6, 4).to(torch.float16)
    key = _write(store, {"kind": "t"}, x, shard_size=100)
    (shard,) = (store.info(key).path / "shards").iterdir()
    out = store.load(key)
    assert out.dtype == torch.float16
    assert torch.equal(out, x)
    assert _mapped_file(out) == str(shard.resolve())  # returned without a copy
    copied = store.load(key, mmap=False)
    assert torch.equal(copied, x)
    assert _mapped_file(copied) is None
    y = torch.randn(5, 3).to(torch.bfloat16)
    assert torch.equal(store.load(_write(store, {"kind": "b"}, y)), y)


def test_incomplete_entries_are_invisible(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path)
    record = {"kind": "image"}
    key = entry_key(record)
    with store.lock([key]):
        w = store.writer(key, record, n_rows=8, dim=2, shard_size=4)
        w.write_shard(0, torch.zeros(4, 2))
        assert w.shard_ok(0)
        assert not w.shard_ok(1)
        with pytest.raises(CorruptEntryError, match="shard 1"):
            w.finalize()
    assert store.keys() == []
    assert not store.has(key)
    with pytest.raises(NotFoundError, match=f"key: no complete entry '{key}'"):
        store.load(key)


def test_writer_checks(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path)
    with pytest.raises(ValueError, match="key"):
        store.writer("0" * 32, {"kind": "x"}, n_rows=1, dim=1)
    key = entry_key({"kind": "x"})
    w = store.writer(key, {"kind": "x"}, n_rows=4, dim=2, shard_size=4)
    with pytest.raises(ValueError, match="shape"):
        w.write_shard(0, torch.zeros(3, 2))
    with pytest.raises(ValueError, match="key"):
        store.entry_dir("../../etc")


def test_extraction_entries_carry_their_key_record(tmp_path: Path) -> None:
    from PIL import Image

    bb = fb.load("fewclip-tiny-vit")
    imgs = [Image.new("RGB", (40, 40), (i * 30, 10, 10)) for i in range(4)]
    res = extract(bb, imgs, views=2, seed=3, store=tmp_path, split="train", dtype=torch.float16)
    store = FeatureStore(tmp_path)
    entries = store.entries(kind="image", backbone=bb.id, split="train")
    assert len(entries) == 3
    views = sorted(e.record["view"].get("index", -1) for e in entries)
    assert views == [-1, 0, 1]
    for e in entries:
        rec = e.record
        assert rec["dtype"] == "float16"
        assert rec["precision"] == "fp32"
        assert rec["preprocess"] == bb.preprocess.to_dict()
        assert rec["fewclip_version"]
        assert rec["dataset"]
        assert rec["n"] == 4
        if rec["view"]["type"] == "augment":
            assert rec["view"]["seed"] == 3
            assert rec["view"]["augment"]["scale"] == [0.5, 1.0]
        assert e.meta["backbone"]["name"] == "fewclip-tiny-vit"
    assert res.features is not None
    assert res.features.dtype == torch.float16
    assert set(res.keys) == {"plain", "view0", "view1"}


def test_a_folder_of_user_files_is_not_used_as_a_store(tmp_path):
    from fewclip.errors import OutputFolderError

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("x")
    store = FeatureStore(mine)
    with pytest.raises(OutputFolderError, match="not a fewclip feature store.*thesis.tex"):
        store.check_writable()
    with pytest.raises(OutputFolderError), store.lock(["ab" * 32]):
        pass
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]
    FeatureStore(tmp_path / "new").check_writable()  # a new or empty folder is fine
