"""Bad option values are usage errors (exit code 2) that name the option, before any work."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fewclip.errors import InvalidValueError

from .conftest import TINY_BACKBONE, run_fewclip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["predict", "ad", "x.png", "--device", "nonsense"], "'--device': expected cpu, cuda"),
        (["fit", "-d", "x", "-o", "y", "--device", "cuda:99"], "'--device': 'cuda:99'"),
        (["extract", "-d", "x", "--precision", "half"], "'--precision': expected one of amp"),
        (["predict", "ad", "x.png", "--format", "xml"], "--format: expected table, csv or json"),
    ],
)
def test_bad_values_are_usage_errors(args: list[str], message: str, tmp_path: Path) -> None:
    res = run_fewclip(*args, store=tmp_path / "s", cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr
    assert "bug" not in res.stderr
    assert "Traceback" not in res.stderr


def test_evaluate_refuses_fit_options_for_an_adapter(opt_adapter: Path, tmp_path: Path) -> None:
    res = run_fewclip("evaluate", opt_adapter, "--seed", "3", "-k", "2", store=tmp_path / "s")
    assert res.returncode == 2
    assert "-k/--shots, --seed: only used with --method" in res.stderr


def test_an_adapter_fitted_on_a_relative_path_evaluates_from_elsewhere(
    opt_data: Path, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    os.symlink(opt_data, work / "photos")
    store = tmp_path / "s"
    res = run_fewclip(
        "fit", "-m", "zero-shot", "-d", "photos", "-b", TINY_BACKBONE, "--views", "0",
        "-o", "ad", "-q", store=store, cwd=work,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    res = run_fewclip("evaluate", work / "ad", "--json", store=store, cwd=tmp_path)
    assert res.returncode == 0, res.stderr  # the record holds the absolute data folder


def test_python_device_errors_name_the_input() -> None:
    import fewclip as fc

    task = fc.SyntheticWorld(3, 8, seed=0).task(1)
    with pytest.raises(InvalidValueError, match="device: expected 'cpu', 'cuda' or 'cuda:N'"):
        fc.create("zero-shot", device="nonsense").fit(task)
    with pytest.raises(InvalidValueError, match="device: expected"):
        fc.load_backbone("fewclip-tiny-vit", device="nonsense")
