"""`fewclip export` through the installed console script."""

from __future__ import annotations

from pathlib import Path

from tests._extras import require_extra
from tests.cli.conftest import run_fewclip


def test_export_writes_a_checked_file_and_keeps_what_exists(opt_adapter, tmp_path):
    require_extra("onnxruntime", "export")
    adapter, store, _ = opt_adapter
    out = tmp_path / "model.onnx"
    res = run_fewclip("export", adapter, "-o", out, store=store)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"wrote {out} (")
    assert (
        "onnx): zero-shot over 3 classes; input 'pixels' (batch, 3, 32, 32) pixels in [0, 1], "
        "resize shortest (bicubic); output 'logits' (batch, 3)"
    ) in res.stdout
    first = out.read_bytes()

    again = run_fewclip("export", adapter, "--output", out, store=store)
    assert again.returncode == 1
    assert again.stderr == f"error: {out}: already exists; --overwrite replaces it\n"
    assert out.read_bytes() == first

    replaced = run_fewclip("export", adapter, "-o", out, "--overwrite", "-q", store=store)
    assert replaced.returncode == 0, replaced.stderr
    assert replaced.stdout == ""

    notes = tmp_path / "notes.onnx"
    notes.write_text("keep me")
    foreign = run_fewclip("export", adapter, "-o", notes, "--overwrite", store=store)
    assert foreign.returncode == 1
    assert "is not a model fewclip exported" in foreign.stderr
    assert notes.read_text() == "keep me"


def test_format_follows_the_suffix_and_contradictions_are_usage_errors(opt_adapter, tmp_path):
    adapter, store, _ = opt_adapter
    res = run_fewclip("export", adapter, "-o", tmp_path / "m.pt", "-q", store=store)
    assert res.returncode == 0, res.stderr
    import zipfile

    assert zipfile.is_zipfile(tmp_path / "m.pt")  # TorchScript, chosen by the suffix
    res = run_fewclip("export", adapter, "-o", tmp_path / "m.pt", "--format", "onnx", store=store)
    assert res.returncode == 2
    assert res.stderr == (
        f"error: --format onnx with --output {tmp_path / 'm.pt'}: the suffix .pt says "
        "torchscript; change one of them\n"
    )
    res = run_fewclip("export", adapter, "-o", tmp_path / "m.bin", "-f", "tflite", store=store)
    assert res.returncode == 2
    assert "expected one of onnx, torchscript, found 'tflite'" in res.stderr
    res = run_fewclip(
        "export", adapter, "-o", tmp_path / "m.bin", "-f", "torchscript", "-q", store=store
    )
    assert res.returncode == 0, res.stderr


def test_export_with_another_backbone_path_checks_its_id(opt_adapter, tmp_path: Path):
    adapter, store, _ = opt_adapter
    res = run_fewclip(
        "export", adapter, "-o", tmp_path / "m.pt", "-b", "fewclip-tiny-rn", store=store
    )
    assert res.returncode == 4
    assert "but the adapter was fitted on 'fewclip-tiny-vit'" in res.stderr
    res = run_fewclip(
        "export", adapter, "-o", tmp_path / "m.pt", "-b", "fewclip-tiny-vit",
        "--pretrained", "missing-weights.pt", store=store,
    )  # fmt: skip
    assert res.returncode != 0
    assert not (tmp_path / "m.pt").exists()
