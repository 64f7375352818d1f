"""A full disk while extracting features and while saving an adapter. Simulated by making the
package's writes fail with ENOSPC after a budget of bytes (the writing code paths are the real
ones; only the bytes that reach the file system are cut short). Nothing written before may be
lost, nothing half-written may stay, the error must be one clear line, and a run with space
again must finish with exactly the clean result."""

from __future__ import annotations

import errno
import os
import shutil
import types
from pathlib import Path

import pytest
import torch

import fewclip._io
import fewclip.backbones as fb
from fewclip.cli import main
from fewclip.features import FeatureStore, extract
from fewclip.testing.images import make_shapes_dataset


class _FullFile:
    """A binary file whose writes fail with ENOSPC once the shared budget is spent (after
    writing what still fits, as a real full disk does)."""

    def __init__(self, f, budget: list[int]) -> None:
        self._f, self._budget = f, budget

    def write(self, data: bytes) -> int:
        room = max(0, self._budget[0])
        if len(data) > room:
            self._f.write(data[:room])
            self._budget[0] = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._budget[0] -= len(data)
        return self._f.write(data)

    def __getattr__(self, name: str):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


def disk_full_after(monkeypatch: pytest.MonkeyPatch, nbytes: int) -> None:
    """Every atomic write of the package and every Path.write_bytes/write_text fails once
    ``nbytes`` more bytes have been written."""
    budget = [nbytes]
    real_fdopen = os.fdopen
    proxy = types.SimpleNamespace(**{k: getattr(os, k) for k in dir(os) if not k.startswith("__")})
    proxy.fdopen = lambda fd, *a, **k: _FullFile(real_fdopen(fd, *a, **k), budget)
    monkeypatch.setattr(fewclip._io, "os", proxy)

    def write_bytes(self: Path, data: bytes) -> int:
        with _FullFile(open(self, "wb"), budget) as f:
            return f.write(bytes(data))

    def write_text(self: Path, text: str, *a: object, **k: object) -> int:
        return write_bytes(self, text.encode())

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    monkeypatch.setattr(Path, "write_text", write_text)


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes_dataset(
        tmp_path_factory.mktemp("full") / "photos",
        classes=("red_circle", "blue_square"),
        per_class={"train": 12, "test": 4},
        size=24,
    )


@pytest.mark.filterwarnings("ignore:resuming entry")
@pytest.mark.parametrize("budget", [0, 3000, 9000])
def test_extraction_on_a_full_disk_keeps_the_store_sound(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, budget: int, fault_record
) -> None:
    bb = fb.load("fewclip-tiny-vit")
    test_images = [str(p) for p in sorted((photos / "test").rglob("*.png"))]
    train_images = [str(p) for p in sorted((photos / "train").rglob("*.png"))]
    store = tmp_path / "store"
    done = extract(bb, test_images, store=store, split="test")  # there before the disk fills
    before = snapshot(store)
    clean = extract(bb, train_images, views=2, split="train", shard_size=8)
    with monkeypatch.context() as m:
        disk_full_after(m, budget)
        with pytest.raises(OSError, match="No space left on device") as caught:
            extract(bb, train_images, views=2, store=store, split="train", shard_size=8)
    assert caught.value.errno == errno.ENOSPC
    fs = FeatureStore(store)
    after = snapshot(store)
    lost = sum(1 for k, v in before.items() if after.get(k) != v)
    half = [k for k in after if k.endswith(".tmp")]
    fault_record.add("disk full, extraction", "detected", lost=lost)
    assert lost == 0
    assert half == []  # no half-written file stays
    assert fs.keys() == list(done.keys.values())  # no entry of the failed run looks complete
    assert all(fs.verify(k) == [] for k in fs.keys())  # noqa: SIM118 (a method)
    again = extract(bb, train_images, views=2, store=store, split="train", shard_size=8)
    assert torch.equal(again.features, clean.features)
    assert torch.equal(again.views, clean.views)


@pytest.mark.parametrize("budget", [0, 300, 1500])  # the new adapter needs more than 3 KB
def test_saving_an_adapter_on_a_full_disk_keeps_the_old_one(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, budget: int, fault_record
) -> None:
    """`fewclip fit -o A --overwrite` with the disk filling while the new adapter is written:
    exit 1 with one error line, and the adapter already in A is untouched."""
    store, out = str(tmp_path / "store"), tmp_path / "adapter"
    monkeypatch.setenv("FEWCLIP_STORE", store)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fit = ["fit", "-m", "zero-shot", "-d", str(photos), "-b", "fewclip-tiny-vit", "-k", "2"]
    fit += ["--views", "0", "-o", str(out), "-q"]
    assert main(fit) == 0
    before = snapshot(out)
    capsys.readouterr()
    with monkeypatch.context() as m:
        disk_full_after(m, budget)
        code = main([*fit[:-3], "-m", "tip-adapter", "-o", str(out), "--overwrite", "-q"])
    err = capsys.readouterr().err
    lost = sum(1 for k, v in before.items() if snapshot(out).get(k) != v)
    fault_record.add(
        "disk full, saving an adapter", "detected" if code == 1 else "traceback", lost=lost
    )
    assert code == 1, err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, err
    assert "No space left on device" in errors[0]
    assert lost == 0
    assert snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert main([*fit[:-3], "-m", "tip-adapter", "-o", str(out), "--overwrite", "-q"]) == 0
    assert '"tip-adapter"' in (out / "config.json").read_text()
    shutil.rmtree(out)
