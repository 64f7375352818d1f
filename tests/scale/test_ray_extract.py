"""Extraction on Ray actors: the same store, byte for byte, as one process; a killed worker's
shard is encoded again elsewhere, once."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import signal
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fewclip.backbones as fb
from fewclip.executors import ExecutorError, RayExecutor, make_executor
from fewclip.features import FeatureStore, extract
from fewclip.testing.faults import hold_on_encode, wait_for_holder


def _images(folder: Path, n: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    paths = []
    for i in range(n):
        arr = rng.integers(0, 255, (int(rng.integers(30, 60)), 48, 3), dtype=np.uint8)
        path = folder / f"{i:03d}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(arr).save(path)
        paths.append(str(path))
    bad = folder / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    paths.insert(13, str(bad))
    return paths


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return _images(tmp_path_factory.mktemp("imgs"), 45)


@pytest.fixture(scope="module")
def local_store(tmp_path_factory: pytest.TempPathFactory, images: list[str]) -> Path:
    """The reference: the same extraction in this process."""
    root = tmp_path_factory.mktemp("local")
    extract(
        fb.load("fewclip-tiny-vit"), images, views=2, store=root, split="train",
        shard_size=8, skip_bad=True, progress=False,
    )  # fmt: skip
    return root


def _files(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root``; of a record, without its creation time (and the
    record's own checksum, which covers that time)."""
    out = {}
    for f in sorted(root.rglob("*")):
        if not f.is_file():
            continue
        data = f.read_bytes()
        if f.name == "record.json":
            rec = json.loads(data)
            del rec["created"], rec["checksum"]
            data = json.dumps(rec, sort_keys=True).encode()
        out[str(f.relative_to(root))] = hashlib.sha256(data).hexdigest()
    return out


def _run_on_ray(images, root, backbone, workers=2):
    return extract(
        backbone, images, views=2, store=root, split="train", shard_size=8, skip_bad=True,
        progress=False, executor=RayExecutor(workers=workers),
    )  # fmt: skip


def test_two_actors_write_the_store_of_one_process_byte_for_byte(
    ray_local, tmp_path, images, local_store
):
    res = _run_on_ray(images, tmp_path, fb.load("fewclip-tiny-vit"))
    files = _files(tmp_path)
    assert files == _files(local_store)
    assert sum(name.endswith(".safetensors") for name in files) == 3 * 6  # 3 views x 6 shards
    assert res.n_encoded == 45
    assert [b.path for b in res.bad_files] == [images[13]]
    ref = extract(
        fb.load("fewclip-tiny-vit"), images, views=2, store=local_store, split="train",
        skip_bad=True, progress=False,
    )  # fmt: skip
    assert torch.equal(res.features, ref.features)
    assert torch.equal(res.views, ref.views)
    # a second run finds everything in the store and starts no worker
    again = _run_on_ray(images, tmp_path, fb.load("fewclip-tiny-vit"))
    assert again.n_encoded == 0


def test_a_killed_worker_s_shard_is_encoded_again_elsewhere(
    ray_local, tmp_path, images, local_store
):
    gate = tmp_path / "gate"
    backbone = hold_on_encode(fb.load("fewclip-tiny-vit"), gate)
    store = tmp_path / "store"
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["res"] = _run_on_ray(images, store, backbone)
        except BaseException as e:  # reported below
            result["error"] = e

    driver = threading.Thread(target=run)
    driver.start()
    pid = wait_for_holder(gate)
    assert pid != os.getpid()  # the gate stopped a worker, not this process
    os.kill(pid, signal.SIGKILL)
    driver.join(timeout=300)
    assert not driver.is_alive()
    assert "error" not in result, result.get("error")
    assert _files(store) == _files(local_store)  # nothing lost, nothing twice
    fs = FeatureStore(store)
    for key in result["res"].keys.values():  # type: ignore[attr-defined]
        assert fs.verify(key, full=True, sha256=True) == []


def test_an_interrupted_local_extraction_is_finished_on_ray(
    ray_local, tmp_path, images, local_store, monkeypatch
):
    """Shards a local run committed before it stopped are kept; Ray encodes only the rest."""
    extract_module = importlib.import_module("fewclip.features.extract")

    class Stop(Exception):
        pass

    def stop_after_two(view, shard):
        if (view, shard) == (1, 1):  # shards 0 and 1 written for the plain view and both views
            raise Stop

    monkeypatch.setattr(extract_module, "_after_shard", stop_after_two)
    with pytest.raises(Stop):
        extract(
            fb.load("fewclip-tiny-vit"), images, views=2, store=tmp_path, split="train",
            shard_size=8, skip_bad=True, progress=False, commit_seconds=None,
        )  # fmt: skip
    monkeypatch.setattr(extract_module, "_after_shard", None)
    with pytest.warns(RuntimeWarning, match="shards are already on disk"):
        res = _run_on_ray(images, tmp_path, fb.load("fewclip-tiny-vit"))
    assert res.n_encoded == 30  # the 30 images after shards 0 and 1 (16 rows, one bad)
    assert _files(tmp_path) == _files(local_store)


def test_without_a_store_the_ray_executor_says_what_it_needs(ray_local, images):
    with pytest.raises(ValueError, match="store: the Ray executor writes the shards"):
        extract(fb.load("fewclip-tiny-vit"), images[:4], executor=RayExecutor(workers=1))


def test_an_item_failing_on_every_worker_stops_after_the_retries(ray_local, tmp_path):
    gate_dir = tmp_path / "gates"
    gate_dir.mkdir()
    executor = RayExecutor(workers=1, max_retries=1)
    outcomes = executor.map(_setup, str(gate_dir), _die, [0])
    with pytest.raises(ExecutorError, match=r"item 0 failed on 2 workers in a row"):
        list(outcomes)


def _setup(payload):
    return payload


def _die(state, item):
    os.kill(os.getpid(), signal.SIGKILL)


def test_work_that_raises_comes_back_as_its_exception_without_retries(ray_local):
    outcomes = dict(RayExecutor(workers=2).map(_setup, 10, _divide, [2, 0, 5]))
    assert outcomes[0] == 5
    assert outcomes[2] == 2
    assert isinstance(outcomes[1], ZeroDivisionError)


def _divide(state, item):
    return state // item


def test_executor_names_and_options_are_checked():
    assert make_executor("local", jobs=3).describe() == "local (3 jobs)"
    assert make_executor("ray", workers=2).name == "ray"
    with pytest.raises(ValueError, match="--executor: expected one of local, ray"):
        make_executor("dask")
    with pytest.raises(ValueError, match="--ray-address: a Ray address needs --executor ray"):
        make_executor("local", address="auto")
    with pytest.raises(ValueError, match="workers: expected a positive integer"):
        RayExecutor(workers=0)


def test_without_ray_installed_the_error_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ExecutorError, match=r"pip install 'fewclip\[ray\]'"):
        RayExecutor().ray()
