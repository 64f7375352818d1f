"""Broken, truncated and empty image files through the installed `fewclip` command."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest

from fewclip.testing.images import make_shapes_dataset, write_bad_images

from .conftest import run_fewclip

TINY = ["-b", "fewclip-tiny-vit"]
FIT = ["fit", *TINY, "-k", "2", "--views", "1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes; train/red_circle holds a broken and a truncated file, test/blue_square an
    empty one."""
    root = make_shapes_dataset(
        tmp_path_factory.mktemp("bad") / "photos",
        classes=("red_circle", "blue_square", "green_triangle"),
        per_class={"train": 8, "test": 3},
        size=32,
    )
    write_bad_images(root / "train" / "red_circle", ["broken.jpg", "truncated.png"])
    write_bad_images(root / "test" / "blue_square", ["empty.jpg"])
    return root


def _no_traceback(res) -> None:  # type: ignore[no-untyped-def]
    assert "Traceback" not in res.stderr, res.stderr


def test_fit_without_skip_bad_names_the_files_and_the_flag(data: Path, tmp_path: Path) -> None:
    res = run_fewclip(*FIT, "-m", "zero-shot", "-d", data, "-o", tmp_path / "a", store=tmp_path)
    assert res.returncode == 1
    _no_traceback(res)
    assert "broken.jpg" in res.stderr
    assert "truncated.png" in res.stderr
    assert "--skip-bad" in res.stderr
    assert "skip_bad=True" not in res.stderr  # the command line's option, not Python's
    assert not (tmp_path / "a").exists()


def test_symbolic_link_loops_and_broken_links_are_named_as_such(data: Path, tmp_path: Path) -> None:
    own = tmp_path / "photos"
    shutil.copytree(data, own)
    cls = sorted((own / "train").iterdir())[0]
    (cls / "loop.png").symlink_to("loop.png")
    (cls / "gone.png").symlink_to("nowhere.png")
    res = run_fewclip(
        *FIT, "-m", "zero-shot", "-d", own, "-o", tmp_path / "a", store=tmp_path / "s"
    )
    assert res.returncode == 1
    _no_traceback(res)
    assert "loop.png: symbolic link loop" in res.stderr
    assert "gone.png: broken symbolic link (its target 'nowhere.png' does not exist)" in res.stderr


def test_fit_and_evaluate_with_skip_bad_list_every_skipped_file(data: Path, tmp_path: Path) -> None:
    out, store = tmp_path / "a", tmp_path / "s"
    res = run_fewclip(
        *FIT, "-m", "tip-adapter", "-d", data, "-o", out, "--evaluate", "--skip-bad", store=store
    )
    assert res.returncode == 0, res.stderr
    for name in ("broken.jpg", "truncated.png", "empty.jpg"):
        assert name in res.stderr
    rec = json.loads((out / "adapter.json").read_text())
    skipped = {(r["split"], Path(r["path"]).name) for r in rec["skipped_images"]}
    assert skipped == {("train", "broken.jpg"), ("train", "truncated.png"), ("test", "empty.jpg")}
    assert all(r["reason"] for r in rec["skipped_images"])
    assert rec["dataset"]["splits"] == {"train": 24, "test": 9}  # the images actually used
    assert rec["test"]["n"] == 9
    # evaluate on a fresh store: without --skip-bad it stops, with it it reports
    fresh = tmp_path / "fresh"
    res = run_fewclip("evaluate", out, "--json", store=fresh)
    assert res.returncode == 1
    assert "empty.jpg" in res.stderr
    assert "--skip-bad" in res.stderr
    _no_traceback(res)
    res = run_fewclip("evaluate", out, "--json", "--skip-bad", store=fresh)
    assert res.returncode == 0, res.stderr
    rep = json.loads(res.stdout)
    assert rep["n"] == 9
    assert [Path(r["path"]).name for r in rep["skipped_images"]] == ["empty.jpg"]


def test_extract_skip_bad_then_fit_without_the_flag_works(data: Path, tmp_path: Path) -> None:
    store = tmp_path / "s"
    res = run_fewclip("extract", "-d", data, *TINY, "--views", "1", "--skip-bad", store=store)
    assert res.returncode == 0, res.stderr
    assert "broken.jpg" in res.stderr
    assert "empty.jpg" in res.stderr
    res = run_fewclip(*FIT, "-m", "zero-shot", "-d", data, "-o", tmp_path / "a", store=store)
    assert res.returncode == 0, res.stderr  # the store remembers the earlier --skip-bad
    assert "skipped 2 image(s)" in res.stderr
    assert "truncated.png" in res.stderr
    rec = json.loads((tmp_path / "a" / "adapter.json").read_text())
    assert len(rec["skipped_images"]) == 2


def test_predict_prints_a_row_for_every_file_and_fails_on_bad_ones(
    data: Path, tmp_path: Path
) -> None:
    store = tmp_path / "s"
    res = run_fewclip(
        *FIT, "-m", "zero-shot", "-d", data, "-o", tmp_path / "a", "--skip-bad", store=store
    )
    assert res.returncode == 0, res.stderr
    new = tmp_path / "new"
    new.mkdir()
    good = [data / "test" / "red_circle" / "000.png", data / "test" / "green_triangle" / "001.png"]
    for g in good:
        shutil.copy(g, new / f"{g.parent.name}.png")
    (bad,) = write_bad_images(new, ["truncated.png"])
    files = [new / "red_circle.png", bad, new / "green_triangle.png"]
    res = run_fewclip("predict", tmp_path / "a", *files, "-k", "2", store=store)
    assert res.returncode == 1
    _no_traceback(res)
    lines = res.stdout.splitlines()
    assert len(lines) == 3
    assert "ERROR" in lines[1]
    assert "truncated.png" in lines[1]
    assert "ERROR" not in lines[0]
    assert "%" in lines[0]
    assert "%" in lines[2]
    assert "1 of 3 images could not be decoded" in res.stderr
    assert "--skip-bad" in res.stderr
    res = run_fewclip(
        "predict", tmp_path / "a", *files, "-k", "2", "-f", "csv", "--skip-bad", store=store
    )
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert [r["image"] for r in rows] == [str(files[0])] * 2 + [str(bad)] + [str(files[2])] * 2
    assert rows[2]["error"]
    assert not rows[0]["error"]
    res = run_fewclip("predict", tmp_path / "a", *files, "-f", "json", store=store)
    assert res.returncode == 1
    got = json.loads(res.stdout)
    assert [("error" in g) for g in got] == [False, True, False]
    # a .txt argument is a list of paths, and the command says so
    (new / "list.txt").write_text("red_circle.png\ngreen_triangle.png\n")
    res = run_fewclip("predict", tmp_path / "a", new / "list.txt", store=store)
    assert res.returncode == 0, res.stderr
    assert "list.txt: a list of 2 image paths" in res.stderr
    assert len(res.stdout.splitlines()) == 2
    (new / "notes.txt").write_text("remember to label the cats\n")
    res = run_fewclip("predict", tmp_path / "a", new / "notes.txt", store=store)
    assert res.returncode == 1
    assert "read as a list of image paths" in res.stderr


def test_bench_skip_bad_records_the_skipped_files_in_every_row(data: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "grid.yaml"
    cfg.write_text(
        f"methods: [zero-shot]\ndatasets: [{data}]\nshots: [1, 2]\nseeds: [1]\n"
        "backbones: [fewclip-tiny-vit]\nviews: 1\n"
    )
    out = tmp_path / "bench"
    res = run_fewclip("bench", cfg, "-o", out, "-q", store=tmp_path / "s")
    assert res.returncode == 1
    assert "--skip-bad" in res.stderr
    _no_traceback(res)
    res = run_fewclip("bench", cfg, "-o", out, "--skip-bad", store=tmp_path / "s")
    assert res.returncode == 0, res.stderr
    assert "truncated.png" in res.stderr
    rows = [json.loads(ln) for ln in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        names = sorted(Path(r["path"]).name for r in row["data"]["skipped_images"])
        assert names == ["broken.jpg", "empty.jpg", "truncated.png"]
