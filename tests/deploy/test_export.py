"""`fewclip.export`: one model file per adapter, equal to fewclip's own logits.

Each method is fitted on a small task in the tiny backbone's feature dimension, exported, and
the file is run where fewclip cannot be imported (onnxruntime for ONNX, plain torch for
TorchScript) on images preprocessed without fewclip; its logits must equal
``Method.logits(Backbone.encode_images(eval_transform(image)))`` within ``export.RTOL``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tests._extras import require_extra
from tests.deploy._outside import run_outside
from tests.methods._helpers import make_clustered_task

import fewclip.backbones as fb
from fewclip import methods
from fewclip.adapter import Adapter
from fewclip.errors import InvalidValueError, MissingExtraError, OutputFolderError
from fewclip.export import RTOL, ExportError, export_adapter, read_metadata
from fewclip.methods.zero_shot import ZeroShot

REPO = Path(__file__).resolve().parents[2]
TINY = "fewclip-tiny-vit"
#: (width, height) of the test images: square at the input size, wider and taller than it
#: (resize of the short side to 32 and a centre crop), and smaller (an upscale)
SIZES = [(32, 32), (45, 37), (30, 61), (20, 24)]


@pytest.fixture(scope="module")
def backbone():
    return fb.load(TINY, precision="fp32")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("export-images")
    g = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate(SIZES):
        pixels = (g.random((h, w, 3)) * 255).astype(np.uint8)
        pixels[: h // 2, :, i % 3] = 230  # some structure, so classes differ
        path = folder / f"img{i}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def _adapter(name: str, backbone) -> Adapter:
    task = make_clustered_task(c=4, shots=3, d=backbone.embed_dim, views=2, seed=3)
    model = methods.create(name, **methods.get(name).quick_params).fit(task)
    return Adapter(model, {"backbone": {"name": TINY, "id": backbone.id}})


def _fewclip_logits(adapter: Adapter, backbone, paths: list[Path]) -> np.ndarray:
    batch = torch.stack([backbone.eval_transform(Image.open(p).convert("RGB")) for p in paths])
    return adapter.method.logits(backbone.encode_images(batch)).float().numpy()


#: Preprocessing written from the metadata alone, as a user without fewclip would: resize the
#: short side to the input size (torchvision's rule: the long side is truncated), bicubic,
#: centre crop (offsets rounded), pixels / 255.
PREPROCESS = """
import json, sys
import numpy as np
from PIL import Image

def pixels(path, meta):
    size = meta["input"]["shape"][2]
    img = Image.open(path).convert("RGB")
    w, h = img.size
    new = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    img = img.resize(new, Image.BICUBIC)
    left, top = round((img.width - size) / 2), round((img.height - size) / 2)
    x = np.asarray(img.crop((left, top, left + size, top + size)), np.float32) / 255
    return x.transpose(2, 0, 1)
"""

RUN_ONNX = (
    PREPROCESS
    + """
import onnxruntime as ort
out = {}
for model_path in sys.argv[1].split(","):
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    meta = json.loads(session.get_modelmeta().custom_metadata_map["fewclip"])
    x = np.stack([pixels(p, meta) for p in sys.argv[2].split(",")])
    out[model_path] = session.run(["logits"], {"pixels": x})[0].tolist()
print(json.dumps(out))
"""
)


def _run_outside(script: str, models: list[Path], paths: list[Path], cwd: Path) -> dict:
    code = script.replace("sys.argv[1]", repr(",".join(map(str, models)))).replace(
        "sys.argv[2]", repr(",".join(map(str, paths)))
    )
    return json.loads(run_outside(code, cwd).strip().splitlines()[-1])


def _rel_err(got, expected) -> float:
    got, expected = np.asarray(got), np.asarray(expected)
    assert got.shape == expected.shape
    return float(np.abs(got - expected).max() / np.abs(expected).max())


#: The methods that can be exported: every one that declares no ``export_refusal``.
EXPORTABLE = [n for n in methods.available() if not methods.get(n).export_refusal]
REFUSED = [n for n in methods.available() if methods.get(n).export_refusal]


def test_every_method_exports_to_onnx_equal_to_fewclip(backbone, images, tmp_path):
    """Every registered method that declares no ``export_refusal``: the ONNX file, run by
    onnxruntime in a process without fewclip on images preprocessed from the metadata, gives
    fewclip's logits."""
    require_extra("onnxruntime", "export")
    expected, files = {}, []
    for name in EXPORTABLE:
        adapter = _adapter(name, backbone)
        path = export_adapter(adapter, tmp_path / f"{name}.onnx", backbone=backbone)
        files.append(path)
        expected[str(path)] = _fewclip_logits(adapter, backbone, images)
    got = _run_outside(RUN_ONNX, files, images, tmp_path)
    for path, logits in got.items():
        assert _rel_err(logits, expected[path]) <= RTOL, path
    assert len(got) == len(EXPORTABLE) == 18
    assert REFUSED == ["cocoop"]  # its scores run the text tower per image


@pytest.mark.parametrize("name", REFUSED)
def test_a_method_that_declares_a_refusal_is_refused_with_its_reason(name, backbone, tmp_path):
    adapter = _adapter(name, backbone)
    with pytest.raises(ExportError) as e:
        export_adapter(adapter, tmp_path / f"{name}.onnx", backbone=backbone)
    assert str(e.value) == f"method {name!r} cannot be exported: {methods.get(name).export_refusal}"
    assert list(tmp_path.iterdir()) == []


def test_torchscript_runs_with_torch_alone(backbone, images, tmp_path):
    """A TorchScript file loads with torch.jit.load where fewclip cannot be imported, reads
    its metadata from the archive, and gives fewclip's logits (float64 fits included)."""
    files, expected = [], {}
    for name, dtype in [("tip-adapter", "float32"), ("clip-adapter", "float64"), ("gda", None)]:
        adapter = _adapter(name, backbone)
        if dtype is not None:
            adapter.method.set_params(dtype=dtype)
            adapter.method.fit(make_clustered_task(c=4, shots=3, d=64, seed=3, views=2))
        path = export_adapter(
            adapter, tmp_path / f"{name}.pt", format="torchscript", backbone=backbone
        )
        files.append(path)
        expected[str(path)] = _fewclip_logits(adapter, backbone, images)
    script = (
        PREPROCESS
        + """
import zipfile, torch
out = {}
for model_path in sys.argv[1].split(","):
    with zipfile.ZipFile(model_path) as z:
        meta = json.loads(z.read(next(n for n in z.namelist() if n.endswith("extra/fewclip.json"))))
    model = torch.jit.load(model_path)
    x = torch.from_numpy(np.stack([pixels(p, meta) for p in sys.argv[2].split(",")]))
    with torch.no_grad():
        out[model_path] = model(x).tolist()
print(json.dumps(out))
"""
    )
    got = _run_outside(script, files, images, tmp_path)
    assert set(got) == set(expected)
    for path, logits in got.items():
        assert _rel_err(logits, expected[path]) <= RTOL, path


def test_metadata_describes_input_output_and_classes(backbone, tmp_path):
    require_extra("onnx", "export")
    adapter = _adapter("tip-adapter", backbone)
    adapter.sha256 = "ab" * 32
    meta = read_metadata(export_adapter(adapter, tmp_path / "m.onnx", backbone=backbone))
    assert meta["classnames"] == ["class 0", "class 1", "class 2", "class 3"]
    assert meta["method"] == "tip-adapter"
    assert meta["input"] == {
        "name": "pixels",
        "shape": ["batch", 3, 32, 32],
        "dtype": "float32",
        "range": [0.0, 1.0],
        "mean": list(backbone.preprocess.mean),
        "std": list(backbone.preprocess.std),
        "resize_mode": "shortest",
        "interpolation": "bicubic",
        "fill_color": 0,
    }
    assert meta["output"] == {"name": "logits", "shape": ["batch", 4]}
    assert meta["backbone"] == {"name": TINY, "id": backbone.id}
    assert meta["adapter_sha256"] == "ab" * 32


def test_a_method_that_refuses_export_says_why_and_writes_nothing(backbone, tmp_path):
    class Untraceable(ZeroShot):
        export_refusal = "its scores call a Python library per query"

    task = make_clustered_task(c=3, shots=2, d=64)
    adapter = Adapter(Untraceable().fit(task), {"backbone": {"name": TINY, "id": backbone.id}})
    with pytest.raises(ExportError) as e:
        export_adapter(adapter, tmp_path / "u.onnx", backbone=backbone)
    assert str(e.value) == (
        "method 'zero-shot' cannot be exported: its scores call a Python library per query"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_graph_that_differs_from_fewclip_is_refused_and_removed(backbone, tmp_path):
    """A head with a Python branch traces one branch only (here: on the batch size, which the
    trace freezes): the check on a probe batch of another size catches it, and neither the file
    nor a temporary is left."""

    class Branchy(ZeroShot):
        def _logits(self, x):
            base = super()._logits(x)
            return base if len(x) <= 3 else -base  # the trace keeps the branch of its batch

    task = make_clustered_task(c=3, shots=2, d=64)
    adapter = Adapter(Branchy().fit(task), {"backbone": {"name": TINY, "id": backbone.id}})
    for fmt in ("onnx", "torchscript"):
        if fmt == "onnx":
            require_extra("onnxruntime", "export")
        with pytest.raises(ExportError, match=r"differ from fewclip's by .* \(tolerance 1e-04\)"):
            export_adapter(adapter, tmp_path / f"b.{fmt}", format=fmt, backbone=backbone)
        assert list(tmp_path.iterdir()) == []


def test_existing_files_are_kept_unless_overwrite_and_foreign_files_always(backbone, tmp_path):
    require_extra("onnx", "export")
    adapter = _adapter("zero-shot", backbone)
    target = tmp_path / "m.onnx"
    export_adapter(adapter, target, backbone=backbone)
    first = target.read_bytes()
    with pytest.raises(
        OutputFolderError, match=r"m\.onnx: already exists; --overwrite replaces it"
    ):
        export_adapter(adapter, target, backbone=backbone)
    other = _adapter("tip-adapter", backbone)
    export_adapter(other, target, backbone=backbone, overwrite=True)
    assert target.read_bytes() != first
    assert read_metadata(target)["method"] == "tip-adapter"
    foreign = tmp_path / "notes.onnx"
    foreign.write_text("my notes")
    with pytest.raises(OutputFolderError, match="not a model fewclip exported"):
        export_adapter(adapter, foreign, backbone=backbone, overwrite=True)
    assert foreign.read_text() == "my notes"
    with pytest.raises(OutputFolderError, match="is a folder"):
        export_adapter(adapter, tmp_path, backbone=backbone)
    with pytest.raises(OutputFolderError, match="no such folder"):
        export_adapter(adapter, tmp_path / "missing" / "m.onnx", backbone=backbone)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "notes.onnx"]


def test_bad_format_and_backbone_are_refused(backbone, tmp_path):
    adapter = _adapter("zero-shot", backbone)
    with pytest.raises(
        InvalidValueError, match=r"format: expected one of onnx, torchscript, found 'tflite'"
    ):
        export_adapter(adapter, tmp_path / "m.tflite", format="tflite", backbone=backbone)
    half = fb.load(TINY, precision="fp16")
    with pytest.raises(InvalidValueError, match="expected one on the CPU in float32"):
        export_adapter(adapter, tmp_path / "m.pt", format="torchscript", backbone=half)


def test_missing_onnx_names_the_extra(backbone, tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)
    adapter = _adapter("zero-shot", backbone)
    with pytest.raises(MissingExtraError, match=re.escape("pip install 'fewclip[export]'")):
        export_adapter(adapter, tmp_path / "m.onnx", backbone=backbone)
    assert list(tmp_path.iterdir()) == []


def test_the_readme_snippet_classifies_like_fewclip_without_fewclip(backbone, tmp_path):
    """The README's onnxruntime lines, run as written (file names substituted) in a process
    that cannot import fewclip, print the class fewclip predicts."""
    require_extra("onnxruntime", "export")
    text = (REPO / "README.md").read_text()
    block = re.search(
        r"<!-- onnx-snippet:start[^\n]*\n(?:<!--[^\n]*\n)?```python\n(.*?)```", text, re.S
    )
    assert block, "README.md has no onnx-snippet block"
    snippet = block.group(1)
    docs = (REPO / "docs" / "deploy.md").read_text()
    assert f"```python\n{snippet}```" in docs, "docs/deploy.md shows other lines than README.md"
    assert len(snippet.strip().splitlines()) <= 12
    adapter = _adapter("tip-adapter", backbone)
    export_adapter(adapter, tmp_path / "my-adapter.onnx", backbone=backbone)
    g = np.random.default_rng(5)
    for i, (w, h) in enumerate([(40, 56), (64, 48)]):
        Image.fromarray((g.random((h, w, 3)) * 255).astype(np.uint8)).save(tmp_path / f"{i}.jpg")
        code = snippet.replace("cat.jpg", str(tmp_path / f"{i}.jpg"))
        printed = run_outside(code, tmp_path).strip().splitlines()[-1]
        logits = _fewclip_logits(adapter, backbone, [tmp_path / f"{i}.jpg"])
        assert printed == adapter.classnames[int(logits[0].argmax())]


@pytest.mark.parametrize("name", ["tip-adapter", "tip-adapter-f", "tip-x", "ape", "proker"])
def test_uneven_classes_export_with_a_free_batch_size(backbone, images, tmp_path, name):
    """A folder of one's own has classes of different sizes, so the cache's class sums take
    the general path (not the equal-blocks reshape): its traced form must not freeze the
    batch size (it once did: onnxruntime refused every other batch size)."""
    require_extra("onnxruntime", "export")
    from tests.methods._helpers import make_shuffled_task

    task = make_shuffled_task(c=4, d=backbone.embed_dim, per=[3, 2, 4, 1], seed=1)
    model = methods.create(name, **methods.get(name).quick_params).fit(task)
    adapter = Adapter(model, {"backbone": {"name": TINY, "id": backbone.id}})
    path = export_adapter(adapter, tmp_path / f"{name}.onnx", backbone=backbone)
    got = _run_outside(RUN_ONNX, [path], images, tmp_path)[str(path)]
    assert _rel_err(got, _fewclip_logits(adapter, backbone, images)) <= RTOL
