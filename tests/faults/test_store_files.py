"""Faults in the feature store: every file of an entry damaged every way. A read must refuse
the damaged entry with a ``CorruptEntryError`` naming it and ``fewclip cache rm`` (never hand
out wrong features), and the next extraction from the same images must rebuild it, saying so,
to exactly the features of a clean run."""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import fewclip.backbones as fb
from fewclip.errors import FewclipError
from fewclip.features import CorruptEntryError, FeatureStore, extract
from fewclip.testing.cli import run_fewclip
from fewclip.testing.images import make_shapes_dataset

from .conftest import bitflip, delete, empty, garbage, truncate


def bitflip_data(p: Path) -> None:
    """One bit of the tensor data (sizes and header stay valid: only a checksum sees it)."""
    bitflip(p, at=-7)


def bitflip_middle(p: Path) -> None:
    bitflip(p)


FAULTS: dict[str, Callable[[Path], None]] = {
    f.__name__: f for f in (bitflip_data, bitflip_middle, truncate, empty, garbage, delete)
}
FILES = ("shard", "record")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    """(backbone, image paths, a clean store with one 3-shard entry, its key, clean features)."""
    tmp = tmp_path_factory.mktemp("fault-store")
    data = make_shapes_dataset(
        tmp / "photos", classes=("red_circle", "blue_square"), per_class={"train": 10}, size=24
    )
    images = [str(p) for p in sorted(data.rglob("*.png"))]
    bb = fb.load("fewclip-tiny-vit")
    store = tmp / "store"
    clean = extract(bb, images, store=store, shard_size=8)
    (key,) = FeatureStore(store).keys()
    return bb, images, store, key, clean.features


def _target(store: FeatureStore, key: str, name: str) -> Path:
    entry = store.entry_dir(key)
    return entry / "record.json" if name == "record" else entry / "shards" / "00001.safetensors"


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("name", FILES)
def test_damaged_entry_is_refused_on_read_and_rebuilt_by_extraction(
    world, tmp_path: Path, name: str, fault: str, fault_record
) -> None:
    bb, images, clean_store, key, clean = world
    root = tmp_path / "store"
    shutil.copytree(clean_store, root)
    store = FeatureStore(root)
    FAULTS[fault](_target(store, key, name))
    # a read: the damaged entry is refused (or, without its record, not there at all)
    message = ""
    try:
        got = store.load(key)
    except CorruptEntryError as e:
        read, message = "detected", str(e)
    except KeyError:  # no complete entry: nothing is handed out
        read = "detected"
        assert name == "record"
        assert fault == "delete"
    except Exception as e:
        read = "traceback"
        raise AssertionError(f"{type(e).__name__}: {e}") from e
    else:
        read = "correct" if torch.equal(got, clean) else "silent"
    fault_record.add("store entry, read", read)
    assert read == "detected"
    if message:
        assert key in message
        assert "fewclip cache rm" in message
    # the next extraction rebuilds it and says so
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = extract(bb, images, store=root, shard_size=8)
    said = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    repaired = torch.equal(again.features, clean) and store.verify(key) == []
    fault_record.add("store entry, extraction", "repaired" if repaired else "silent")
    assert repaired
    assert len(said) == 1, said
    assert key[:12] in said[0]
    assert ("resuming" if (name, fault) == ("record", "delete") else "rebuilt") in said[0]


def test_cli_rebuilds_a_damaged_entry_with_one_note_and_verify_agrees(
    world, tmp_path: Path, fault_record
) -> None:
    """`fewclip extract` on a folder whose stored features were damaged: exit 0, one note,
    and `fewclip cache verify` is clean afterwards."""
    _, images, _, _, _ = world
    data = Path(images[0]).parents[2]
    store = tmp_path / "store"
    args = ("extract", "-d", data, "-b", "fewclip-tiny-vit", "-q")
    assert run_fewclip(*args, store=store).returncode == 0
    fs = FeatureStore(store)
    key = fs.entries(kind="image")[0].key
    bitflip_data(sorted((fs.entry_dir(key) / "shards").glob("*.safetensors"))[0])
    assert run_fewclip("cache", "verify", store=store).returncode == 1
    res = run_fewclip(*args, store=store)
    notes = [ln for ln in res.stderr.splitlines() if ln.startswith("note: rebuilt entry")]
    ok = res.returncode == 0 and len(notes) == 1 and "Traceback" not in res.stderr
    fault_record.add("store entry via `fewclip extract`", "repaired" if ok else "traceback")
    assert ok, res.stderr
    assert key[:12] in notes[0]
    assert run_fewclip("cache", "verify", store=store).returncode == 0


def test_every_read_path_checks_the_data(world, tmp_path: Path) -> None:
    """load (mmap or not, whole or some rows) and iter_shards all refuse a flipped bit."""
    _, _, clean_store, key, _ = world
    root = tmp_path / "store"
    shutil.copytree(clean_store, root)
    store = FeatureStore(root)
    bitflip_data(_target(store, key, "shard"))
    for read in (
        lambda: store.load(key),
        lambda: store.load(key, mmap=False),
        lambda: store.load(key, rows=[9]),
        lambda: list(store.iter_shards(key)),
    ):
        with pytest.raises(CorruptEntryError, match=r"shard 1 .*checksum mismatch"):
            read()
    assert store.load(key, check=False).shape == (20, 64)  # the escape hatch, on request
    assert isinstance(CorruptEntryError("x"), FewclipError)
