"""fewclip._io.atomic_write: the one atomic write of the package."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fewclip._io import atomic_write, file_mode


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_writes_text_and_bytes_with_the_umask_permissions(tmp_path: Path) -> None:
    mask = os.umask(0)
    os.umask(mask)
    assert file_mode() == 0o666 & ~mask
    atomic_write(tmp_path / "sub" / "a.txt", "héllo")
    atomic_write(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "sub" / "a.txt").read_text(encoding="utf-8") == "héllo"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert _mode(tmp_path / "b.bin") == file_mode()  # not mkstemp's 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin", "sub"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = atomic_write(tmp_path / "a.txt", "old")
    with pytest.raises(TypeError):
        atomic_write(target, 42)  # type: ignore[arg-type]
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_bench_reports_and_saved_adapters_are_readable_by_the_group(tmp_path: Path) -> None:
    from fewclip.bench.results import write_atomic
    from fewclip.testing.images import make_shapes_dataset

    p = write_atomic(tmp_path / "results.md", "| a |")
    assert _mode(p) == file_mode()
    root = make_shapes_dataset(tmp_path / "d", classes=("red_circle",), per_class={"train": 1})
    assert _mode(root / "train" / "red_circle" / "000.png") == file_mode()
