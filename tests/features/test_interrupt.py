"""An interrupted extraction keeps its finished rows (partial shards) and resumes to the same
features as an uninterrupted run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import fewclip.backbones as fb
from fewclip.features import FeatureStore, extract
from fewclip.features.extract import ExtractionInterrupted
from fewclip.testing.images import make_shapes_dataset, write_bad_images


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    root = make_shapes_dataset(
        tmp_path_factory.mktemp("imgs"), classes=("red_circle", "blue_square"),
        per_class={"train": 20}, size=32,
    )  # fmt: skip
    write_bad_images(root / "train" / "red_circle", ["broken.jpg"])
    return sorted(str(p) for p in (root / "train").rglob("*.*"))


def _all_entries(store: Path) -> dict[str, torch.Tensor]:
    fs = FeatureStore(store)
    return {k: fs.load(k, mmap=False) for k in fs.keys()}  # noqa: SIM118 (a method)


def test_interrupt_keeps_rows_and_resume_equals_an_uninterrupted_run(
    images: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bb = fb.load("fewclip-tiny-vit")
    kw = {"views": 2, "seed": 3, "batch_size": 6, "skip_bad": True, "split": "t"}
    ref = extract(bb, images, store=tmp_path / "ref", **kw)

    calls = {"n": 0}
    real = bb.encode_images

    def flaky(x: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(x)

    monkeypatch.setattr(bb, "encode_images", flaky)
    with pytest.raises(ExtractionInterrupted, match=r"(\d+) of 123 image-view rows are kept") as e:
        extract(bb, images, store=tmp_path / "s", commit_seconds=0.0, **kw)
    kept = int(str(e.value).split(" of ")[0].rsplit(" ", 1)[-1])
    assert kept > 0
    assert isinstance(e.value, KeyboardInterrupt)
    assert list((tmp_path / "s").rglob("*.partial"))  # the unfinished shard was saved
    monkeypatch.setattr(bb, "encode_images", real)

    res = extract(bb, images, store=tmp_path / "s", commit_seconds=0.0, **kw)
    assert res.n_encoded == ref.n_encoded - kept // 3  # only the rest was encoded
    assert torch.equal(res.features, ref.features)
    assert torch.equal(res.views, ref.views)
    assert [b.path for b in res.bad_files] == [b.path for b in ref.bad_files]
    got, want = _all_entries(tmp_path / "s"), _all_entries(tmp_path / "ref")
    assert len(want) == 3  # the plain features and two views
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert not list((tmp_path / "s").rglob("*.partial"))  # finished shards replace partials


def test_a_damaged_partial_is_ignored(images: list[str], tmp_path: Path) -> None:
    from fewclip.features.store import EntryWriter

    bb = fb.load("fewclip-tiny-vit")
    fs = FeatureStore(tmp_path / "s")
    from fewclip.features.store import entry_key

    rec = {"kind": "test"}
    w = fs.writer(entry_key(rec), rec, n_rows=10, dim=4, dtype=torch.float32, shard_size=10)
    assert isinstance(w, EntryWriter)
    w.write_partial(0, torch.ones(3, 4))
    rows, bad = w.read_partial(0) or (None, None)
    assert rows is not None
    assert rows.shape == (3, 4)
    assert bad == []
    w.partial_path(0).write_bytes(w.partial_path(0).read_bytes()[:-4])
    assert w.read_partial(0) is None
    with pytest.raises(ValueError, match="fewer than 10 rows"):
        w.write_partial(0, torch.ones(10, 4))
    del bb
