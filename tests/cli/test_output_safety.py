"""The installed `fewclip` command never deletes or overwrites what it did not write."""

from __future__ import annotations

from pathlib import Path

import pytest

from fewclip.testing.images import make_shapes_dataset

from .conftest import run_fewclip

FIT = ["fit", "-b", "fewclip-tiny-vit", "-k", "2", "--views", "0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("own")
    classes = ("red_circle", "blue_square", "green_triangle")
    return make_shapes_dataset(
        root / "my_images", classes=classes, per_class={"train": 8, "test": 3}, size=32
    )


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_out_inside_the_training_folder_is_refused(data: Path, tmp_path: Path) -> None:
    before = _snapshot(data)
    assert len([k for k in before if k.endswith(".png")]) == 33
    for out in (data / "train", data, data / "train" / "adapter"):
        res = run_fewclip(*FIT, "-m", "zero-shot", "-d", data, "-o", out, store=tmp_path / "s")
        assert res.returncode == 1, res.stderr
        assert "inside the input data" in res.stderr
        assert "Traceback" not in res.stderr
        assert _snapshot(data) == before
    assert not (data / "train" / "adapter").exists()


def test_out_dot_writes_into_the_current_folder_and_keeps_it(data: Path, tmp_path: Path) -> None:
    """`-o .` in an empty folder: the adapter lands there, the folder itself (the user's
    working directory) is the same folder afterwards, and replacing needs --overwrite."""
    here = tmp_path / "here"
    here.mkdir()
    inode = here.stat().st_ino
    args = (*FIT, "-m", "zero-shot", "-d", data, "-o", ".")
    res = run_fewclip(*args, store=tmp_path / "s", cwd=here)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in here.iterdir()) == [
        "adapter.json",
        "config.json",
        "state.safetensors",
    ]
    again = run_fewclip(*args, store=tmp_path / "s", cwd=here)
    assert again.returncode == 1
    assert "--overwrite" in again.stderr
    res = run_fewclip(*args, "--overwrite", store=tmp_path / "s", cwd=here)
    assert res.returncode == 0, res.stderr
    assert here.stat().st_ino == inode
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no leftovers
    assert "zero-shot" in (here / "adapter.json").read_text()


def test_out_at_a_folder_of_user_files_is_refused_with_and_without_overwrite(
    data: Path, tmp_path: Path
) -> None:
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "important.txt").write_text("notes")
    (mine / "sub" / "photo.jpg").write_bytes(b"\xff\xd8\xff...")
    before = _snapshot(mine)
    for extra in ([], ["--overwrite"]):
        res = run_fewclip(
            *FIT, "-m", "zero-shot", "-d", data, "-o", mine, *extra, store=tmp_path / "s"
        )
        assert res.returncode == 1
        assert "not empty" in res.stderr
        assert "important.txt" in res.stderr
        assert _snapshot(mine) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_replacing_an_adapter_needs_overwrite_and_says_what_it_replaced(
    data: Path, tmp_path: Path
) -> None:
    out, store = tmp_path / "adapter", tmp_path / "s"
    res = run_fewclip(*FIT, "-m", "zero-shot", "-d", data, "-o", out, store=store)
    assert res.returncode == 0, res.stderr
    first = _snapshot(out)
    res = run_fewclip(*FIT, "-m", "tip-adapter", "-d", data, "-o", out, store=store)
    assert res.returncode == 1
    assert "already holds a zero-shot adapter" in res.stderr
    assert "--overwrite" in res.stderr
    assert _snapshot(out) == first
    res = run_fewclip(*FIT, "-m", "tip-adapter", "-d", data, "-o", out, "--overwrite", store=store)
    assert res.returncode == 0, res.stderr
    assert "replaced a zero-shot adapter" in res.stderr
    assert "tip-adapter" in res.stderr
    assert '"method": "tip-adapter"' in (out / "config.json").read_text()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("command", ["bench", "demo"])
def test_bench_and_demo_refuse_a_folder_of_user_files(
    command: str, data: Path, tmp_path: Path
) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "results.md").write_text("my own results")
    (mine / "notes.txt").write_text("notes")
    before = _snapshot(mine)
    grid = ["methods=zero-shot", "shots=1", "seeds=1", "backbones=fewclip-tiny-vit", "views=1"]
    args = ["bench", f"datasets={data}", *grid] if command == "bench" else ["demo", "--fast"]
    res = run_fewclip(*args, "-o", mine, store=tmp_path / "s")
    assert res.returncode == 1, res.stderr
    assert "notes.txt" in res.stderr
    assert "did not write" in res.stderr
    assert _snapshot(mine) == before


def test_bench_output_inside_the_dataset_is_refused_and_its_own_folder_resumes(
    data: Path, tmp_path: Path
) -> None:
    grid = [f"datasets={data}", "methods=zero-shot", "shots=1", "seeds=1"]
    grid += ["backbones=fewclip-tiny-vit", "views=1", "-q"]
    res = run_fewclip("bench", *grid, "-o", data / "results", store=tmp_path / "s")
    assert res.returncode == 1
    assert "inside the input data" in res.stderr
    assert not (data / "results").exists()
    out = tmp_path / "bench"
    for _ in range(2):  # the second run resumes in the folder it marked
        res = run_fewclip("bench", *grid, "-o", out, store=tmp_path / "s")
        assert res.returncode == 0, res.stderr
    assert len((out / "results.jsonl").read_text().splitlines()) == 1
    assert res.stdout.count("zero-shot") == 1  # -q prints the table (once)


def test_store_pointed_at_a_folder_of_user_files_is_refused(data: Path, tmp_path: Path) -> None:
    mine = tmp_path / "Documents"
    mine.mkdir()
    (mine / "thesis.tex").write_text("x")
    res = run_fewclip(
        "extract", "-d", data, "-b", "fewclip-tiny-vit", "--views", "0", "--store", mine,
        store=tmp_path / "s",
    )  # fmt: skip
    assert res.returncode == 1
    assert "not a fewclip feature store" in res.stderr
    assert "--store" in res.stderr
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]
