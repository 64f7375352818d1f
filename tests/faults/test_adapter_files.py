"""Faults in an adapter folder: every file damaged every way, and states that are readable but
wrong. Loading must fail with a ``DamagedFileError`` naming the file (never a traceback or a
silent answer), and the damaged folder must be left as it was for the user to inspect."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file
from tests.methods._helpers import resign_state

import fewclip
from fewclip.errors import DamagedFileError, FewclipError
from fewclip.testing.cli import run_fewclip
from fewclip.testing.images import make_shapes_dataset

from .conftest import bitflip, delete, empty, garbage, truncate

FILES = ("adapter.json", "config.json", "state.safetensors")


FAULTS: dict[str, Callable[[Path], None]] = {
    f.__name__: f for f in (bitflip, truncate, empty, garbage, delete)
}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(adapter folder, one test image, feature store) from `fewclip fit` with the tiny
    backbone on 3 classes of drawn shapes."""
    tmp = tmp_path_factory.mktemp("fault-adapter")
    data = make_shapes_dataset(
        tmp / "photos",
        classes=("red_circle", "blue_square", "green_triangle"),
        per_class={"train": 4, "test": 1},
        size=32,
    )
    adapter, store = tmp / "adapter", tmp / "store"
    res = run_fewclip(
        "fit", "-m", "tip-adapter", "-d", data, "-k", "2", "-b", "fewclip-tiny-vit",
        "--views", "1", "-o", adapter, "-q", store=store,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    image = sorted((data / "test").rglob("*.png"))[0]
    return adapter, image, store


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def lost_files(before: dict[str, bytes], folder: Path) -> int:
    """Files the failed load removed or changed (it must only read)."""
    return sum(
        1 for k, v in before.items() if not (folder / k).is_file() or (folder / k).read_bytes() != v
    )


def load_outcome(folder: Path) -> tuple[str, str]:
    """(outcome, message) of ``Adapter.load`` on a damaged folder."""
    try:
        fewclip.Adapter.load(folder)
    except DamagedFileError as e:
        return "detected", str(e)
    except FewclipError as e:  # a clear error of another kind (e.g. not an adapter at all)
        return "detected", str(e)
    except Exception as e:
        return "traceback", f"{type(e).__name__}: {e}"
    return "silent", ""


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("name", FILES)
def test_damaged_file_is_named_on_load(
    fitted: tuple[Path, Path, Path], tmp_path: Path, name: str, fault: str, fault_record
) -> None:
    folder = tmp_path / "adapter"
    shutil.copytree(fitted[0], folder)
    FAULTS[fault](folder / name)
    before = snapshot(folder)
    outcome, message = load_outcome(folder)
    lost = lost_files(before, folder)
    fault_record.add("adapter folder", outcome, lost=lost)
    assert outcome == "detected", message
    assert lost == 0
    assert str(folder) in message
    if not (name == "adapter.json" and fault == "delete"):
        assert name in message  # the damaged file itself is named
        assert "fit it again" in message


def resign(folder: Path) -> None:
    """Recompute the recorded checksums after an edit, as a buggy writer would have written
    them: what is left to catch the edit is the validation of the content."""
    from fewclip.adapter import _record_digest

    resign_state(folder)
    rec = json.loads((folder / "adapter.json").read_text())
    rec["checksums"]["config.json"] = hashlib.sha256(
        (folder / "config.json").read_bytes()
    ).hexdigest()
    rec["checksums"]["adapter.json"] = _record_digest(rec)
    (folder / "adapter.json").write_text(json.dumps(rec, indent=2))


def nan_state(folder: Path) -> None:
    tensors = load_file(str(folder / "state.safetensors"))
    name = sorted(k for k, v in tensors.items() if v.is_floating_point())[0]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = float("nan")
    save_file(tensors, str(folder / "state.safetensors"))


def _edit_json(folder: Path, name: str, edit: Callable[[dict], None]) -> None:
    d = json.loads((folder / name).read_text())
    edit(d)
    (folder / name).write_text(json.dumps(d, indent=2))


def classes_cut_in_both(folder: Path) -> None:
    for name in ("config.json", "adapter.json"):
        _edit_json(folder, name, lambda d: d.update(classnames=d["classnames"][:2]))


def class_added_in_both(folder: Path) -> None:
    for name in ("config.json", "adapter.json"):
        _edit_json(folder, name, lambda d: d.update(classnames=[*d["classnames"], "extra"]))


def class_added_in_record(folder: Path) -> None:
    _edit_json(folder, "adapter.json", lambda d: d.update(classnames=[*d["classnames"], "x"]))


def classes_reordered_in_config(folder: Path) -> None:
    _edit_json(folder, "config.json", lambda d: d.update(classnames=d["classnames"][::-1]))


def feature_dim_changed(folder: Path) -> None:
    _edit_json(folder, "config.json", lambda d: d.update(n_features_in=d["n_features_in"] + 1))


def method_renamed(folder: Path) -> None:
    _edit_json(folder, "adapter.json", lambda d: d.update(method="tip-x"))


WRONG_CONTENT = {
    f.__name__: f
    for f in (
        nan_state,
        classes_cut_in_both,
        class_added_in_both,
        class_added_in_record,
        classes_reordered_in_config,
        feature_dim_changed,
        method_renamed,
    )
}


@pytest.mark.parametrize("signed", [True, False], ids=["checksums-updated", "no-checksums"])
@pytest.mark.parametrize("edit", list(WRONG_CONTENT))
def test_readable_but_inconsistent_state_is_refused(
    fitted: tuple[Path, Path, Path], tmp_path: Path, edit: str, signed: bool, fault_record
) -> None:
    """Edits that keep every file readable: caught by the checksums, and, where the checksums
    were updated too (or the adapter predates them), by the content checks."""
    folder = tmp_path / "adapter"
    shutil.copytree(fitted[0], folder)
    if not signed:  # an adapter written before fewclip recorded checksums
        _edit_json(folder, "adapter.json", lambda d: d.pop("checksums"))
        _edit_json(folder, "config.json", lambda d: d.pop("state_sha256"))
    WRONG_CONTENT[edit](folder)
    if signed:
        resign(folder)
    outcome, message = load_outcome(folder)
    fault_record.add("adapter folder", outcome)
    assert outcome == "detected", message
    assert "fit it again" in message


def test_checksums_catch_each_edit_that_keeps_files_readable(
    fitted: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """Without re-signing, every content edit is reported as a checksum mismatch of the file
    that was edited (adapter.json's own digest, or config.json's, or the state's)."""
    for edit, fn in WRONG_CONTENT.items():
        folder = tmp_path / edit
        shutil.copytree(fitted[0], folder)
        fn(folder)
        with pytest.raises(DamagedFileError, match="checksum mismatch"):
            fewclip.Adapter.load(folder)


def test_clean_adapter_loads_and_round_trips(
    fitted: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    a = fewclip.Adapter.load(fitted[0])
    a.save(tmp_path / "again")
    b = fewclip.Adapter.load(tmp_path / "again")
    assert b.info == a.info
    assert b.classnames == a.classnames


CLI_FAULTS: dict[str, tuple[Callable[[Path], None], str]] = {
    "bitflip-state": (lambda f: bitflip(f / "state.safetensors"), "state.safetensors"),
    "truncate-state": (lambda f: truncate(f / "state.safetensors"), "state.safetensors"),
    "bitflip-config": (lambda f: bitflip(f / "config.json"), "config.json"),
    "bitflip-record": (lambda f: bitflip(f / "adapter.json"), "adapter.json"),
    "nan-state": (lambda f: (nan_state(f), resign(f)), "state.safetensors"),
    "classes-cut": (lambda f: (classes_cut_in_both(f), resign(f)), "config.json"),
}
# every fault through `predict`, three of them through `evaluate` too (the same loader)
CLI_CASES = [("predict", f) for f in CLI_FAULTS] + [
    ("evaluate", f) for f in ("bitflip-state", "bitflip-record", "nan-state")
]


@pytest.mark.parametrize(("command", "fault"), CLI_CASES)
def test_cli_reports_a_damaged_adapter_in_one_line(
    fitted: tuple[Path, Path, Path], tmp_path: Path, fault: str, command: str, fault_record
) -> None:
    adapter, image, store = fitted
    folder = tmp_path / "adapter"
    shutil.copytree(adapter, folder)
    damage, file = CLI_FAULTS[fault]
    damage(folder)
    args = (folder, image) if command == "predict" else (folder, "-d", image.parents[2])
    res = run_fewclip(command, *args, store=store)
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    if "Traceback" in res.stderr or res.returncode == 70:
        outcome = "traceback"
    elif res.returncode == 0:
        outcome = "silent"
    else:
        outcome = "detected"
    fault_record.add(f"adapter via `fewclip {command}`", outcome)
    assert res.returncode == 1, res.stderr
    assert len(errors) == 1, res.stderr
    assert file in errors[0]
    assert res.stdout == ""
