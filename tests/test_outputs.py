"""Output folders never lose a user's file: ``Method.save``, ``Adapter.save`` and the rules of
``fewclip.outputs`` (the CLI side is in tests/cli/test_output_safety.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fewclip import methods
from fewclip.adapter import Adapter
from fewclip.data import load_folder
from fewclip.errors import FewclipError, OutputFolderError
from fewclip.outputs import check_outside, write_folder
from fewclip.task import FeatureSet, Task


def _task(seed: int = 0) -> Task:
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(6, 8, generator=g)
    text = torch.nn.functional.normalize(torch.randn(3, 8, generator=g), dim=1)
    return Task(["a", "b", "c"], text, FeatureSet(feats, torch.tensor([0, 0, 1, 1, 2, 2])))


def _user_files(folder: Path) -> dict[str, bytes]:
    """A user's folder: a text file and an image in a sub-folder."""
    (folder / "sub").mkdir(parents=True)
    (folder / "important.txt").write_text("my notes")
    (folder / "sub" / "photo.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    return _snapshot(folder)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _hidden(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def test_save_into_a_folder_of_user_files_is_refused_and_deletes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "mine"
    before = _user_files(target)
    m = methods.create("zero-shot").fit(_task())
    for overwrite in (False, True):
        with pytest.raises(OutputFolderError, match="not empty.*important.txt.*sub/") as e:
            m.save(target, overwrite=overwrite)
        assert isinstance(e.value, FewclipError)
        assert isinstance(e.value, FileExistsError)
        assert _snapshot(target) == before
    assert _hidden(tmp_path) == []


def test_adapter_save_refuses_user_files_even_with_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "mine"
    before = _user_files(target)
    ad = Adapter(methods.create("zero-shot").fit(_task()), {"backbone": {"id": "x"}})
    with pytest.raises(OutputFolderError, match="not empty"):
        ad.save(target, overwrite=True)
    with pytest.raises(OutputFolderError, match="not empty"):
        Adapter.check_target(target, overwrite=True)
    assert _snapshot(target) == before


def test_existing_method_folder_needs_overwrite_and_is_then_replaced(tmp_path: Path) -> None:
    target = tmp_path / "m"
    methods.create("zero-shot").fit(_task(0)).save(target)
    first = _snapshot(target)
    new = methods.create("zero-shot").fit(_task(1))
    with pytest.raises(OutputFolderError, match="already holds a zero-shot method.*--overwrite"):
        new.save(target)
    assert _snapshot(target) == first
    new.save(target, overwrite=True)
    q = torch.randn(4, 8)
    assert torch.equal(methods.load(target).logits(q), new.logits(q))
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "state.safetensors"]
    assert _hidden(tmp_path) == []


def test_adapter_over_adapter_of_another_method_reports_what_it_replaced(tmp_path: Path) -> None:
    target = tmp_path / "ad"
    Adapter(methods.create("zero-shot").fit(_task()), {"backbone": {"id": "x"}}).save(target)
    assert Adapter.check_target(target, overwrite=True) == "a zero-shot adapter"
    with pytest.raises(OutputFolderError, match="already holds a zero-shot adapter"):
        Adapter.check_target(target)
    tip = methods.create("tip-adapter", search_step=(4, 3)).fit(
        Task(
            ["a", "b", "c"],
            _task().text_weights,
            _task().support,
            FeatureSet(torch.randn(3, 8), torch.tensor([0, 1, 2])),
        )
    )
    Adapter(tip, {"backbone": {"id": "x"}}).save(target, overwrite=True)
    assert Adapter.load(target).method.name == "tip-adapter"
    assert sorted(p.name for p in target.iterdir()) == [
        "adapter.json",
        "config.json",
        "state.safetensors",
    ]


def test_fewclip_folder_with_a_foreign_file_is_refused_even_with_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "ad"
    m = methods.create("zero-shot").fit(_task())
    m.save(target)
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(OutputFolderError, match="files fewclip did not write.*notes.txt"):
        m.save(target, overwrite=True)
    assert (target / "notes.txt").read_text() == "keep me"
    assert (target / "config.json").is_file()


def test_empty_folder_is_written_and_a_file_is_refused(tmp_path: Path) -> None:
    m = methods.create("zero-shot").fit(_task())
    (tmp_path / "empty").mkdir()
    m.save(tmp_path / "empty")
    assert (tmp_path / "empty" / "config.json").is_file()
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputFolderError, match="found a file"):
        m.save(tmp_path / "file", overwrite=True)
    assert (tmp_path / "file").read_text() == "x"


def test_a_failing_write_leaves_the_old_folder_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out"
    write_folder(target, lambda t: (t / "a").write_text("old"), own_files={"a"}, owner=_ours)

    def broken(tmp: Path) -> None:
        (tmp / "a").write_text("new")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_folder(target, broken, own_files={"a"}, owner=_ours, overwrite=True)
    assert (target / "a").read_text() == "old"
    assert _hidden(tmp_path) == []


def _ours(folder: Path) -> str | None:
    return "a test output" if (folder / "a").is_file() else None


def test_check_outside_refuses_the_input_folder_and_anything_below(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    for out in (data, data / "train", data / "train" / "new" / "deeper"):
        with pytest.raises(OutputFolderError, match="inside the input data"):
            check_outside(out, [data], what="--out")
    check_outside(tmp_path / "sibling", [data], what="--out")
    # a relative spelling of the same folder is caught too
    with pytest.raises(OutputFolderError):
        check_outside(data / "train" / ".." / "train", [data], what="--out")


def test_input_folders_of_an_image_folder_dataset(tmp_path: Path) -> None:
    from PIL import Image

    for split in ("train", "test"):
        for c in ("cat", "dog"):
            (tmp_path / "imgs" / split / c).mkdir(parents=True)
            Image.new("RGB", (4, 4)).save(tmp_path / "imgs" / split / c / "1.png")
    ds = load_folder(tmp_path / "imgs")
    folders = {p.resolve() for p in ds.input_folders()}
    assert (tmp_path / "imgs").resolve() in folders
    with pytest.raises(OutputFolderError):
        check_outside(tmp_path / "imgs" / "train", ds.input_folders(), what="--out")


def test_claim_folder_marks_new_folders_and_reuses_its_own(tmp_path: Path) -> None:
    from fewclip.outputs import OUTPUT_MARKER, claim_folder

    out = claim_folder(tmp_path / "bench", "bench", ["results.*"])
    assert (out / OUTPUT_MARKER).is_file()
    (out / "results.jsonl").write_text("{}\n")
    assert claim_folder(out, "bench", ["results.*"]) == out  # a resumed run
    with pytest.raises(OutputFolderError, match="holds fewclip bench results, not demo"):
        claim_folder(out, "demo", ["results.*"])


def test_claim_folder_refuses_user_files_and_adopts_old_fewclip_folders(tmp_path: Path) -> None:
    from fewclip.outputs import OUTPUT_MARKER, claim_folder

    mine = tmp_path / "mine"
    before = _user_files(mine)
    with pytest.raises(OutputFolderError, match="did not write.*important.txt"):
        claim_folder(mine, "bench", ["results.*"])
    assert _snapshot(mine) == before
    assert not (mine / OUTPUT_MARKER).exists()
    old = tmp_path / "old"
    old.mkdir()
    (old / "results.jsonl").write_text("{}\n")
    claim_folder(old, "bench", ["results.*"])
    assert (old / OUTPUT_MARKER).is_file()
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputFolderError, match="found a file"):
        claim_folder(tmp_path / "file", "bench", [])
