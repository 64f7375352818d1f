"""Feature extraction: equality with the model, seeded views, caching, resume, bad files."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fewclip.backbones as fb
from fewclip.backbones.transforms import view_generator
from fewclip.features import CorruptEntryError, FeatureStore, extract
from fewclip.imageio import BadImageError, decode_image
from fewclip.task import FeatureSet

extract_module = importlib.import_module("fewclip.features.extract")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bb() -> fb.Backbone:
    return fb.load("fewclip-tiny-vit")


def make_images(folder: Path, n: int, seed: int = 0) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        h, w = int(rng.integers(32, 64)), int(rng.integers(32, 64))
        arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        path = folder / f"{i:03d}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(arr).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return make_images(tmp_path_factory.mktemp("imgs"), 40)


class Counter:
    def __init__(self, bb: fb.Backbone) -> None:
        self.images = 0
        self.calls = 0
        self._orig = bb.encode_images

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.images += x.shape[0]
        return self._orig(x)


def test_features_equal_direct_model_call(bb: fb.Backbone, images: list[str]) -> None:
    res = extract(bb, images, batch_size=16)
    batch = torch.stack([bb.eval_transform(decode_image(p)) for p in images])
    with torch.no_grad():
        direct = bb.model.encode_image(batch)
    assert res.features is not None
    assert res.features.shape == (40, bb.embed_dim)
    torch.testing.assert_close(res.features, direct, rtol=1e-5, atol=1e-5)
    assert res.views is None
    assert res.bad_files == []
    assert res.n_encoded == 40


def test_views_are_seeded(bb: fb.Backbone, images: list[str]) -> None:
    a = extract(bb, images, views=3, seed=1, batch_size=8, plain=False)
    b = extract(bb, images, views=3, seed=1, batch_size=5, shard_size=7)
    c = extract(bb, images, views=3, seed=2)
    assert a.views is not None
    assert b.views is not None
    assert c.views is not None
    assert a.features is None
    assert a.views.shape == (3, 40, bb.embed_dim)
    torch.testing.assert_close(a.views, b.views, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(a.views, c.views)
    assert not torch.allclose(a.views[0], a.views[1])
    # view v of image i is the train transform seeded by (seed, v, i)
    i, v = 7, 2
    x = bb.train_transform(decode_image(images[i]), view_generator(1, v, i))
    torch.testing.assert_close(a.views[v, i], bb.encode_images(x[None])[0], rtol=1e-5, atol=1e-5)


def test_workers_give_the_same_views(bb: fb.Backbone, images: list[str]) -> None:
    a = extract(bb, images[:12], views=2, seed=3, batch_size=4)
    b = extract(bb, images[:12], views=2, seed=3, batch_size=6, num_workers=1)
    assert a.views is not None
    assert b.views is not None
    torch.testing.assert_close(a.views, b.views, rtol=1e-5, atol=1e-5)


def test_second_extraction_is_served_from_store(
    tmp_path: Path, bb: fb.Backbone, images: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    labels = torch.arange(40) % 4
    first = extract(bb, images, labels=labels, views=2, store=tmp_path, split="train")
    counter = Counter(bb)
    monkeypatch.setattr(bb, "encode_images", counter)
    second = extract(bb, images, labels=labels, views=2, store=tmp_path, split="train")
    assert counter.calls == 0
    assert second.n_encoded == 0
    assert first.features is not None
    assert second.features is not None
    assert torch.equal(first.features, second.features)
    assert first.views is not None
    assert second.views is not None
    assert torch.equal(first.views, second.views)
    # more views: only the new one is computed
    third = extract(bb, images, labels=labels, views=3, store=tmp_path, split="train")
    assert counter.images == 40
    assert third.views is not None
    assert torch.equal(third.views[:2], first.views)
    # a different split name is a different entry
    extract(bb, images, store=tmp_path, split="val")
    assert counter.images == 80
    fs = second.feature_set()
    assert isinstance(fs, FeatureSet)
    assert fs.n_views == 2
    assert torch.equal(fs.labels, labels)


def test_changed_file_invalidates_cache(tmp_path: Path, bb: fb.Backbone) -> None:
    paths = make_images(tmp_path / "imgs", 4)
    a = extract(bb, paths, store=tmp_path / "store")
    Image.new("RGB", (40, 40), (0, 0, 0)).save(paths[0])
    os.utime(paths[0], ns=(1, 1))
    b = extract(bb, paths, store=tmp_path / "store")
    assert b.n_encoded == 4
    assert a.features is not None
    assert b.features is not None
    assert not torch.allclose(a.features[0], b.features[0])
    assert torch.equal(a.features[1:], b.features[1:])


def _script(store: Path, images: list[str], body: str) -> str:
    return textwrap.dedent(
        f"""
        import importlib, sys, time, torch
        torch.set_num_threads(1)
        import fewclip.backbones as fb
        from fewclip.features import extract
        mod = importlib.import_module("fewclip.features.extract")
        bb = fb.load("fewclip-tiny-vit")
        images = {images!r}
        store = {str(store)!r}
        """
    ) + textwrap.dedent(body)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_sigkill_then_resume_equals_uninterrupted(
    tmp_path: Path, bb: fb.Backbone, images: list[str]
) -> None:
    store = tmp_path / "store"
    body = """
        done = []
        def hook(view, shard):
            done.append((view, shard))
            if len(done) == 4:   # shards 0 and 1 of both entries are on disk
                print("READY", flush=True)
                time.sleep(600)
        mod._after_shard = hook
        extract(bb, images, views=1, seed=5, store=store, shard_size=8, batch_size=8)
        print("FINISHED", flush=True)
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", _script(store, images, body)],
        stdout=subprocess.PIPE,
        env=_env(),
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line == "READY", line
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert FeatureStore(store).keys() == []  # nothing complete yet
    with pytest.warns(RuntimeWarning, match=r"resuming entry .* 2 of 5 shards are already on disk"):
        resumed = extract(bb, images, views=1, seed=5, store=store, shard_size=8, batch_size=8)
    assert resumed.n_encoded == 40 - 16
    clean = extract(bb, images, views=1, seed=5, shard_size=8, batch_size=8)
    assert resumed.features is not None
    assert clean.features is not None
    torch.testing.assert_close(resumed.features, clean.features, rtol=0, atol=0)
    assert resumed.views is not None
    assert clean.views is not None
    torch.testing.assert_close(resumed.views, clean.views, rtol=0, atol=0)
    fs = FeatureStore(store)
    keys = fs.keys()
    assert len(keys) == 2
    assert all(not fs.verify(k) for k in keys)


def test_truncated_shard_is_detected_and_rebuilt(
    tmp_path: Path, bb: fb.Backbone, images: list[str]
) -> None:
    first = extract(bb, images, store=tmp_path, shard_size=16)
    store = FeatureStore(tmp_path)
    (key,) = store.keys()
    shard = store.entry_dir(key) / "shards" / "00001.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 100])
    assert not store.has(key)
    assert any("shard 1" in p for p in store.verify(key, full=False))
    with pytest.raises(
        CorruptEntryError,
        match=r"damaged: shard 1 .*Run the command that extracted it again.*fewclip cache rm ",
    ):
        store.load(key)
    with pytest.warns(
        RuntimeWarning, match=r"rebuilt entry .* shard 1 .*truncated.*1 of 3 shards encoded again"
    ):
        again = extract(bb, images, store=tmp_path, shard_size=16)
    assert again.n_encoded == 16  # only the damaged shard
    assert first.features is not None
    assert again.features is not None
    assert torch.equal(first.features, again.features)
    assert store.verify(key) == []


def test_corrupt_bytes_are_found_on_every_read_and_rebuilt(
    tmp_path: Path, bb: fb.Backbone, images: list[str]
) -> None:
    first = extract(bb, images[:10], store=tmp_path)
    store = FeatureStore(tmp_path)
    (key,) = store.keys()
    shard = store.entry_dir(key) / "shards" / "00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-8] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert store.verify(key, full=False) == []
    assert any("checksum" in p for p in store.verify(key, full=True))
    with pytest.raises(CorruptEntryError, match=r"shard 0 .*checksum mismatch"):
        store.load(key)  # every read checks the data
    with pytest.warns(RuntimeWarning, match=r"rebuilt entry .*checksum mismatch.*1 of 1 shards"):
        again = extract(bb, images[:10], store=tmp_path)  # found without verify=True
    assert again.n_encoded == 10
    assert first.features is not None
    assert again.features is not None
    assert torch.equal(first.features, again.features)


def test_two_processes_same_entry(tmp_path: Path, images: list[str]) -> None:
    """Two processes extract the same entry at once: the second waits on the lock, then reads
    what the first computed.

    The overlap is forced, not timed: process A stops after its first shard, holding the lock,
    and writes ``sync/holding``; the parent then starts B, whose first lock request finds the
    lock taken and writes ``sync/blocked-B`` before it waits; only then does A go on.
    """
    store = tmp_path / "store"
    sync = tmp_path / "sync"
    sync.mkdir()
    body = f"""
        import fcntl, types
        from pathlib import Path
        store_mod = importlib.import_module("fewclip.features.store")
        role, sync = sys.argv[1], Path({str(sync)!r})

        def wait_for(path):
            deadline = time.monotonic() + 120
            while not path.exists():
                if time.monotonic() > deadline:
                    raise SystemExit(f"{{role}}: {{path.name}} never appeared")
                time.sleep(0.01)

        def flock(fd, op):
            if op == fcntl.LOCK_EX:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return
                except BlockingIOError:
                    (sync / f"blocked-{{role}}").touch()
            fcntl.flock(fd, op)

        store_mod.fcntl = types.SimpleNamespace(
            flock=flock, LOCK_EX=fcntl.LOCK_EX, LOCK_UN=fcntl.LOCK_UN
        )

        def hold(view, shard):
            if not (sync / "holding").exists():
                (sync / "holding").touch()
                wait_for(sync / "blocked-B")

        if role == "A":
            mod._after_shard = hold
        r = extract(bb, images, views=1, store=store, shard_size=8, batch_size=8)
        print("N", r.n_encoded, flush=True)
        print("SUM", float(r.features.double().sum()), float(r.views.double().sum()), flush=True)
    """
    script = _script(store, images, body)

    def start(role: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-c", script, role], stdout=subprocess.PIPE, env=_env(), text=True
        )

    a = start("A")
    procs = [a]
    try:
        deadline = time.monotonic() + 120
        while not (sync / "holding").exists():
            assert a.poll() is None, "A ended before it held the lock"
            assert time.monotonic() < deadline, "A never held the lock"
            time.sleep(0.01)
        b = start("B")
        procs.append(b)
        # B finishes only after A released the lock; if B never waited for it (no lock), A
        # would wait for blocked-B forever: it is killed below
        out_b = b.communicate(timeout=120)[0]
        assert (sync / "blocked-B").exists(), "B did not wait for A's lock"
        outs = [a.communicate(timeout=120)[0], out_b]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], outs
    assert not (sync / "blocked-A").exists()
    sums = [o.strip().splitlines()[-1] for o in outs]
    assert sums[0].startswith("SUM")
    assert sums[0] == sums[1]
    encoded = [int(o.strip().splitlines()[-2].split()[1]) for o in outs]
    assert encoded == [40, 0]  # A computed the entry, B read it
    fs = FeatureStore(store)
    keys = fs.keys()
    assert len(keys) == 2  # plain + one view, each exactly once
    assert all(fs.verify(k) == [] for k in keys)


def test_bad_files_raise_or_are_skipped_and_recorded(
    tmp_path: Path, bb: fb.Backbone, images: list[str]
) -> None:
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    (bad_dir / "empty.jpg").write_bytes(b"")
    (bad_dir / "text.png").write_text("not an image")
    data = Path(images[0]).read_bytes()
    (bad_dir / "cut.jpg").write_bytes(data[: len(data) // 2])
    bad = [str(bad_dir / n) for n in ("empty.jpg", "text.png", "cut.jpg")]
    mixed = [*images[:5], bad[0], *images[5:8], *bad[1:]]
    labels = torch.arange(len(mixed))
    with pytest.raises(BadImageError) as err:
        extract(bb, mixed, labels=labels, views=1, store=tmp_path / "s")
    assert [b.path for b in err.value.bad_files] == bad
    for path in bad:
        assert path in str(err.value)
    res = extract(bb, mixed, labels=labels, views=1, store=tmp_path / "s", skip_bad=True)
    assert res.n_encoded == 0  # served from the store, bad files included
    assert [b.path for b in res.bad_files] == bad
    assert res.bad_index == [5, 9, 10]
    assert res.features is not None
    assert res.features.shape == (8, bb.embed_dim)
    assert res.labels is not None
    assert res.labels.tolist() == [0, 1, 2, 3, 4, 6, 7, 8]
    assert res.index.tolist() == [0, 1, 2, 3, 4, 6, 7, 8]
    full = extract(bb, images[:8], views=1)
    assert full.features is not None
    assert res.views is not None
    assert full.views is not None
    torch.testing.assert_close(res.features, full.features, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(res.views[:, :5], full.views[:, :5], rtol=1e-5, atol=1e-5)
    for info in FeatureStore(tmp_path / "s").entries(kind="image"):
        assert [b.path for _, b in info.bad_files] == bad
    # in-memory extraction reports the same
    mem = extract(bb, mixed, skip_bad=True)
    assert [b.path for b in mem.bad_files] == bad


def test_argument_errors(bb: fb.Backbone, images: list[str]) -> None:
    with pytest.raises(TypeError, match="images"):
        extract(bb, images[0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="labels"):
        extract(bb, images, labels=[0, 1])
    with pytest.raises(ValueError, match="views"):
        extract(bb, images, views=-1)
    with pytest.raises(ValueError, match="nothing to extract"):
        extract(bb, images, plain=False)
    with pytest.raises(TypeError, match="backbone"):
        extract("fewclip-tiny-vit", images)  # type: ignore[arg-type]


def test_pil_images_and_empty_input(bb: fb.Backbone) -> None:
    imgs = [Image.new("RGB", (40, 40), (i * 20, 0, 0)) for i in range(3)]
    res = extract(bb, imgs, views=1)
    assert res.features is not None
    assert res.features.shape == (3, bb.embed_dim)
    empty = extract(bb, [], views=1)
    assert empty.features is not None
    assert empty.features.shape == (0, bb.embed_dim)
