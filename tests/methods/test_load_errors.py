"""What ``fewclip.methods.load`` says about a folder it cannot load, word for word.

Each case is a folder (or a file) a user could hand it: a pickle or ``torch.save`` file, some
other file, a config edited by hand or by another program, a state file that is not
safetensors or holds NaNs. The folders are written by ``save`` and then edited; state edits
record the new checksum (``rewrite_state``), so only the check under test can catch them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file
from tests.methods._helpers import (
    make_clustered_task,
    pickle_message,
    resign_state,
    rewrite_state,
    write_pickle,
    write_torch_save,
)

from fewclip import methods
from fewclip.errors import DamagedFileError, InvalidValueError, MissingFileError
from fewclip.methods.base import REFIT_HINT
from fewclip.methods.clip_adapter import CLIPAdapter
from fewclip.methods.zero_shot import ZeroShot

EXPECTED = "a method folder with config.json and state.safetensors written by Method.save"


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    """A zero-shot method of 5 classes and 16 features, saved."""
    folder = tmp_path / "zs"
    ZeroShot().fit(make_clustered_task()).save(folder)
    return folder


#: ``_edit_config(folder, key=_DROP)`` deletes the key
_DROP = object()


def _edit_config(folder: Path, **changes: Any) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is _DROP:
            del cfg[key]
        else:
            cfg[key] = value
    (folder / "config.json").write_text(json.dumps(cfg))


def _load_error(folder: Path, kind: type[Exception] = DamagedFileError) -> str:
    with pytest.raises(kind) as e:
        methods.load(folder)
    return str(e.value)


# -- a file instead of a folder ---------------------------------------------------------------
def test_a_pickle_file_is_refused_unread(tmp_path: Path) -> None:
    path = write_pickle(tmp_path / "model.pkl")
    assert path.read_bytes()[:1] == b"\x80"
    assert _load_error(path, InvalidValueError) == pickle_message(path, EXPECTED)


def test_a_torch_save_zip_file_is_refused_unread(tmp_path: Path) -> None:
    path = write_torch_save(tmp_path / "model.pt")
    assert path.read_bytes()[:2] == b"PK"
    assert _load_error(path, InvalidValueError) == pickle_message(path, EXPECTED)


@pytest.mark.parametrize("content", [b"P", b"pk notes", b"x\x80", b""])
def test_any_other_file_is_named_as_a_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    message = _load_error(path, InvalidValueError)
    assert message == f"{path}: expected {EXPECTED}, found a file"


# -- config.json ------------------------------------------------------------------------------
def test_a_folder_without_config_is_named(saved: Path) -> None:
    (saved / "config.json").unlink()
    message = _load_error(saved, MissingFileError)
    assert message == f"{saved}: no config.json found; expected a folder from save()"


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe{}"])
def test_a_config_that_is_not_json_is_named(saved: Path, content: bytes) -> None:
    (saved / "config.json").write_bytes(content)
    message = _load_error(saved, InvalidValueError)
    with pytest.raises((json.JSONDecodeError, UnicodeDecodeError)) as reason:
        json.loads((saved / "config.json").read_text())  # the decoder's own reason
    assert message == f"{saved / 'config.json'}: not valid JSON ({reason.value})"


@pytest.mark.parametrize("config", [[1, 2], {"format": "fewclip-method/0", "method": "zero-shot"}])
def test_a_config_of_another_format_is_refused(saved: Path, config: object) -> None:
    (saved / "config.json").write_text(json.dumps(config))
    message = _load_error(saved, InvalidValueError)
    assert message == (
        f"{saved / 'config.json'}: not a fewclip method config (expected format 'fewclip-method/1')"
    )


@pytest.mark.parametrize("names", [[], ["cat", 3], "cat", None, _DROP])
def test_class_names_must_be_a_non_empty_list_of_strings(saved: Path, names: object) -> None:
    _edit_config(saved, classnames=names)
    assert _load_error(saved) == (
        f"{saved / 'config.json'}: 'classnames' is not a non-empty list of names; {REFIT_HINT}"
    )


@pytest.mark.parametrize("dim", [0, -3, True, False, "16", 16.0, None])
def test_the_feature_dimension_must_be_a_positive_integer(saved: Path, dim: object) -> None:
    _edit_config(saved, n_features_in=dim)
    assert _load_error(saved) == (
        f"{saved / 'config.json'}: 'n_features_in' is {dim!r}, expected a positive integer; "
        f"{REFIT_HINT}"
    )


def test_one_feature_is_a_valid_dimension(tmp_path: Path) -> None:
    task = make_clustered_task(d=1)
    m = ZeroShot().fit(task)
    m.save(tmp_path / "one")
    loaded = methods.load(tmp_path / "one")
    assert loaded.n_features_in_ == 1
    x = torch.linspace(-1, 1, 7).unsqueeze(1)
    assert torch.equal(loaded.logits(x), m.logits(x))


@pytest.mark.parametrize("key", ["params", "state_values"])
@pytest.mark.parametrize("value", [[1, 2], "lr=0.1", 3])
def test_params_and_state_values_must_be_objects(saved: Path, key: str, value: object) -> None:
    _edit_config(saved, **{key: value})
    assert _load_error(saved) == (
        f"{saved / 'config.json'}: {key!r} is not a JSON object; {REFIT_HINT}"
    )


def test_missing_params_is_a_damaged_config(saved: Path) -> None:
    _edit_config(saved, params=_DROP)
    assert _load_error(saved) == (
        f"{saved / 'config.json'}: 'params' is not a JSON object; {REFIT_HINT}"
    )


def test_a_config_without_state_values_loads(tmp_path: Path) -> None:
    """Folders of older versions have no ``state_values``: a method whose fit records only
    tensors loads from them as before."""
    m = ZeroShot().fit(make_clustered_task())
    m.save(tmp_path / "old")
    _edit_config(tmp_path / "old", state_values=_DROP)
    loaded = methods.load(tmp_path / "old")
    x = torch.randn(4, 16)
    assert torch.equal(loaded.logits(x), m.logits(x))


def test_loaded_methods_number_their_classes(saved: Path) -> None:
    loaded = methods.load(saved)
    assert loaded.classes_ == [0, 1, 2, 3, 4]
    assert loaded.classnames_ == [f"class {i}" for i in range(5)]


# -- state.safetensors ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "data", [b"not safetensors at all", b"\x10\x00\x00\x00\x00\x00\x00\x00{}", b"\xff" * 3]
)
def test_an_unreadable_state_names_the_reader_s_reason(saved: Path, data: bytes) -> None:
    with pytest.raises(SafetensorError) as e:  # the reason, as the reader gives it
        load_safetensors(data)
    reason = str(e.value).splitlines()[0]
    assert reason
    (saved / "state.safetensors").write_bytes(data)
    resign_state(saved)
    assert _load_error(saved) == (
        f"{saved / 'state.safetensors'}: not a readable safetensors file ({reason}); {REFIT_HINT}"
    )


def test_a_missing_fitted_tensor_is_named(saved: Path) -> None:
    path = saved / "state.safetensors"
    save_file({"other": torch.zeros(2)}, str(path), metadata={"method": "zero-shot"})
    resign_state(saved)
    assert _load_error(saved) == (f"{path}: missing fitted tensors ['text_weights_']; {REFIT_HINT}")


@pytest.mark.parametrize("bad", [1, 3, 80])
def test_non_finite_fitted_values_are_counted(saved: Path, bad: int) -> None:
    non_finite = torch.tensor([float("nan"), float("inf"), -float("inf")]).repeat(bad)
    weights = torch.randn(5, 16)
    weights.view(-1)[:bad] = non_finite[:bad]
    rewrite_state(saved, "zero-shot", text_weights_=weights)
    assert _load_error(saved) == (
        f"{saved / 'state.safetensors'}: fitted tensor 'text_weights_' holds {bad} non-finite "
        f"values (NaN or inf); {REFIT_HINT}"
    )


def test_extra_state_comes_back(tmp_path: Path) -> None:
    """A method that saves more than its declared tensors (CLIP-Adapter's adapter weights)
    scores the same after loading."""
    task = make_clustered_task()
    m = CLIPAdapter(epochs=2, batch_size=8).fit(task)
    m.save(tmp_path / "ca")
    loaded = methods.load(tmp_path / "ca")
    x = torch.randn(6, 16)
    assert torch.equal(loaded.logits(x), m.logits(x))
