"""Files that are not adapter folders, handed to the installed ``fewclip`` and to
``Adapter.load``: a pickle or ``torch.save`` file is named as such and never read further."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.methods._helpers import pickle_message, write_pickle, write_torch_save

from fewclip import Adapter
from fewclip.adapter import AdapterError

from .conftest import run_fewclip

EXPECTED = "an adapter folder (with adapter.json) written by `fewclip fit`"


@pytest.mark.parametrize("write", [write_pickle, write_torch_save])
def test_adapter_load_names_a_pickle_file(tmp_path: Path, write) -> None:
    path = write(tmp_path / "model.pt")
    with pytest.raises(AdapterError) as e:
        Adapter.load(path)
    assert str(e.value) == pickle_message(path, EXPECTED)


def test_adapter_load_names_any_other_file_and_a_folder_without_record(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    with pytest.raises(AdapterError) as e:
        Adapter.load(notes)
    assert str(e.value) == f"{notes}: expected {EXPECTED}, found a file"
    with pytest.raises(AdapterError) as e:
        Adapter.load(tmp_path)
    assert str(e.value) == (
        f"{tmp_path}: no adapter.json; this is not an adapter folder written by `fewclip fit` "
        "(a bare method folder loads with fewclip.methods.load)"
    )
    assert notes.read_text() == "my notes"


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_the_cli_names_a_torch_save_file_in_one_line(tmp_path: Path, command: str) -> None:
    """``fewclip predict model.pt …`` / ``fewclip evaluate model.pt …`` exit 1 with one line
    that says the file is a pickle / torch.save file; the file is left as it was."""
    path = write_torch_save(tmp_path / "model.pt")
    before = path.read_bytes()
    image = tmp_path / "a.png"
    image.write_bytes(b"not read")
    args = [path, image] if command == "predict" else [path, "--data", tmp_path]
    res = run_fewclip(command, *args, store=tmp_path / "store")
    assert res.returncode == 1, res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [f"error: {pickle_message(path, EXPECTED)}"]
    assert "Traceback" not in res.stderr
    assert path.read_bytes() == before
