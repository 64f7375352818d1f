"""One model file from an adapter: the image encoder and the fitted head, for ONNX Runtime or
TorchScript, usable without fewclip.

The exported model maps a batch of images, resized and cropped to the backbone's input size
with pixel values in [0, 1], to class logits:

    pixels (B, 3, H, W) float32 in [0, 1]  →  logits (B, C) float32

The backbone's normalisation ``(pixels − mean) / std`` is inside the model, then the image
encoder, then the method exactly as ``Method.logits`` runs it (its fitted tensors, a Tip-Adapter
cache for instance, are constants of the file). The batch size B is free. The class names, the
input's size, mean, std and resize rule, the method and the backbone are stored in the file as
one JSON record (key ``fewclip``; ONNX metadata or a TorchScript extra file), see
:func:`read_metadata`.

Every export is checked before it is kept: the file is loaded back (by onnxruntime, or by
``torch.jit.load``) and run on a probe batch, and its logits must equal fewclip's own
(``Method.logits`` of ``Backbone.encode_images``) within :data:`RTOL` relative to the largest
logit. A file that fails is removed and :class:`ExportError` names the method.

This module belongs to the image world (it needs a backbone); the feature world knows nothing
of it. Methods that cannot be traced set ``Method.export_refusal`` to the reason.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fewclip._io import file_mode
from fewclip._version import __version__
from fewclip.backbones.base import Backbone
from fewclip.errors import (
    FewclipError,
    InvalidValueError,
    MissingExtraError,
    OutputFolderError,
)
from fewclip.methods.base import Method

__all__ = [
    "FORMATS",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "RTOL",
    "ExportError",
    "ExportedModel",
    "export_adapter",
    "read_metadata",
]

FORMATS = ("onnx", "torchscript")
INPUT_NAME = "pixels"
OUTPUT_NAME = "logits"
RTOL = 1e-4
"""Largest accepted ``max |exported − fewclip| / max |fewclip|`` over a probe batch (float32)."""

METADATA_KEY = "fewclip"
_FORMAT = "fewclip-export/1"
_ONNX_OPSET = 17
_ONNX_HINT = "ONNX export needs onnx and onnxruntime: pip install 'fewclip[export]'"


class ExportError(FewclipError, RuntimeError):
    """An adapter could not be exported faithfully (a method that cannot be traced, or a
    file whose logits differ from fewclip's); no file is left behind."""


class ExportedModel(nn.Module):
    """Pixels in [0, 1] (B, 3, H, W) → class logits (B, C): normalisation, the backbone's image
    encoder, then the fitted method (on a frozen copy, with every tensor a constant)."""

    mean: Tensor
    std: Tensor

    def __init__(self, backbone: Backbone, method: Method) -> None:
        super().__init__()
        pre = backbone.preprocess
        self.register_buffer("mean", torch.tensor(pre.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(pre.std).view(1, 3, 1, 1))
        # the backbone's model is deliberately not a submodule: only what the image encoder
        # uses ends up in the file (as constants), not the text tower
        self._encode = backbone._encode_images
        self._method = _frozen_copy(method)

    def forward(self, pixels: Tensor) -> Tensor:
        x = (pixels - self.mean) / self.std
        features = self._encode(x).float()
        # Method.logits also rescales each row by a power of two first (frexp, which ONNX
        # lacks); encoder outputs are far from overflow, and every head is invariant to it.
        m = self._method
        return m._query_logits(m._to(features)).float()


def _frozen_copy(method: Method) -> Method:
    """A deep copy of ``method`` whose tensors and modules need no gradient (a traced graph
    holds them as constants, which must not require grad)."""
    m = copy.deepcopy(method)
    for name, value in vars(m).items():
        if isinstance(value, nn.Module):
            value.requires_grad_(False)
        elif isinstance(value, Tensor) and value.requires_grad:
            setattr(m, name, value.detach())
        elif isinstance(value, dict):
            for v in value.values():
                if isinstance(v, nn.Module):
                    v.requires_grad_(False)
    return m


def metadata(adapter: Any, backbone: Backbone, fmt: str) -> dict[str, Any]:
    """The JSON record stored in the exported file."""
    pre = backbone.preprocess
    return {
        "format": _FORMAT,
        "file_format": fmt,
        "classnames": adapter.classnames,
        "method": adapter.method.name,
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", 3, pre.size[0], pre.size[1]],
            "dtype": "float32",
            "range": [0.0, 1.0],
            "mean": list(pre.mean),
            "std": list(pre.std),
            "resize_mode": pre.resize_mode,
            "interpolation": pre.interpolation,
            "fill_color": pre.fill_color,
        },
        "output": {"name": OUTPUT_NAME, "shape": ["batch", len(adapter.classnames)]},
        "backbone": {
            "name": adapter.info.get("backbone", {}).get("name", backbone.name),
            "id": backbone.id,
        },
        "adapter_sha256": getattr(adapter, "sha256", None),
        "fewclip_version": __version__,
        "rtol": RTOL,
    }


def export_adapter(
    adapter: Any,
    path: str | os.PathLike[str],
    *,
    format: str = "onnx",
    backbone: Backbone | None = None,
    overwrite: bool = False,
    probe_batch: int = 3,
) -> Path:
    """Export ``adapter`` (a :class:`fewclip.Adapter`) and its backbone as one file at ``path``.

    ``backbone`` defaults to the adapter's own, loaded on the CPU in float32; one passed in
    must have the adapter's id, run on the CPU and compute in float32. An existing ``path`` is
    replaced only with ``overwrite=True`` and only when it is a file fewclip exported (never a
    folder or a foreign file). The file is written to a hidden sibling, checked (see the module
    docstring) and renamed into place; returns ``path``.
    """
    if format not in FORMATS:
        raise InvalidValueError(
            f"format: expected one of {', '.join(FORMATS)}, found {format!r} (--format)"
        )
    method = adapter.method
    refusal = getattr(type(method), "export_refusal", None)
    if refusal:
        raise ExportError(f"method {method.name!r} cannot be exported: {refusal}")
    out = Path(path)
    _check_target(out, overwrite=overwrite)
    if format == "onnx":
        _require_onnx()
    if backbone is None:
        backbone = adapter.load_backbone(device="cpu", precision="fp32")
    else:
        adapter.check_backbone(backbone)
        if backbone.device.type != "cpu" or backbone.compute_precision != "fp32":
            raise InvalidValueError(
                f"backbone: expected one on the CPU in float32 for export, found device "
                f"{backbone.device} with precision {backbone.compute_precision!r}"
            )
    model = ExportedModel(backbone, method).eval()
    meta = metadata(adapter, backbone, format)
    h, w = backbone.preprocess.size
    probe = torch.rand(probe_batch, 3, h, w, generator=torch.Generator().manual_seed(0))
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with _tracing():
            if format == "onnx":
                _write_onnx(model, probe, tmp, meta)
            else:
                _write_torchscript(model, probe, tmp, meta)
        _verify(tmp, format, backbone, method, probe_batch + 2)
        os.chmod(tmp, file_mode())
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return out


def _check_target(out: Path, *, overwrite: bool) -> None:
    if out.is_dir():
        raise OutputFolderError(f"{out}: is a folder; give the path of the file to write (-o)")
    if not out.parent.is_dir():
        raise OutputFolderError(f"{out.parent}: no such folder for the exported file (-o)")
    if not out.exists():
        return
    if not overwrite:
        raise OutputFolderError(f"{out}: already exists; --overwrite replaces it")
    try:
        read_metadata(out)
    except (ExportError, MissingExtraError, OSError):
        raise OutputFolderError(
            f"{out}: exists and is not a model fewclip exported, so it is not replaced even "
            "with --overwrite; choose another path (-o)"
        ) from None


@contextlib.contextmanager
def _tracing() -> Iterator[None]:
    """No gradients, no fused attention fast path (it has no ONNX form), exporter warnings off."""
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise MissingExtraError(_ONNX_HINT) from e


def _xlogy_symbolic(g: Any, x: Any, y: Any) -> Any:
    """ONNX form of ``torch.xlogy(x, y)``: ``0`` where ``x == 0``, else ``x · log y``."""
    zero = g.op("Constant", value_t=torch.tensor(0.0))
    zero = g.op("CastLike", zero, x)
    prod = g.op("Mul", x, g.op("Log", y))
    return g.op("Where", g.op("Equal", x, zero), zero, prod)


def _write_onnx(model: nn.Module, probe: Tensor, path: Path, meta: dict[str, Any]) -> None:
    import onnx

    torch.onnx.register_custom_op_symbolic("aten::xlogy", _xlogy_symbolic, _ONNX_OPSET)
    try:
        torch.onnx.export(
            model,
            (probe,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=_ONNX_OPSET,
            dynamo=False,
        )
    except Exception as e:
        raise ExportError(
            f"method {meta['method']!r} could not be traced to ONNX: {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}"
        ) from e
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    proto.doc_string = (
        f"fewclip {meta['method']} adapter on {meta['backbone']['name']}: pixels in [0, 1] "
        f"(batch, 3, H, W) → logits over {len(meta['classnames'])} classes"
    )
    onnx.save(proto, str(path))


def _write_torchscript(model: nn.Module, probe: Tensor, path: Path, meta: dict[str, Any]) -> None:
    try:
        traced = torch.jit.trace(model, (probe,), check_trace=False)
    except Exception as e:
        raise ExportError(
            f"method {meta['method']!r} could not be traced to TorchScript: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from e
    torch.jit.save(traced, str(path), _extra_files={f"{METADATA_KEY}.json": json.dumps(meta)})


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``fewclip`` record of a file :func:`export_adapter` wrote (ONNX or TorchScript).

    Raises :class:`ExportError` when the file holds no such record."""
    p = Path(path)
    if zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as z:
            names = [n for n in z.namelist() if n.endswith(f"extra/{METADATA_KEY}.json")]
            if names:
                return dict(json.loads(z.read(names[0])))
        raise ExportError(f"{p}: a zip archive without a fewclip export record")
    try:
        import onnx
    except ImportError as e:
        raise MissingExtraError(_ONNX_HINT) from e
    try:
        proto = onnx.load(str(p), load_external_data=False)
    except Exception as e:
        raise ExportError(f"{p}: neither a TorchScript archive nor an ONNX model") from e
    for entry in proto.metadata_props:
        if entry.key == METADATA_KEY:
            return dict(json.loads(entry.value))
    raise ExportError(f"{p}: an ONNX model without a fewclip export record")


def _run_exported(path: Path, fmt: str, pixels: Tensor) -> Tensor:
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        out = session.run([OUTPUT_NAME], {INPUT_NAME: pixels.numpy()})[0]
        return torch.from_numpy(out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated"
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        result: Tensor = module(pixels)
    return result


def _verify(path: Path, fmt: str, backbone: Backbone, method: Method, batch: int) -> None:
    """The exported file's logits on a probe batch (of another size than the traced one, so a
    batch size frozen into the graph is caught) equal fewclip's within :data:`RTOL`."""
    h, w = backbone.preprocess.size
    pixels = torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(1))
    mean = torch.tensor(backbone.preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(backbone.preprocess.std).view(1, 3, 1, 1)
    expected = method.logits(backbone.encode_images((pixels - mean) / std)).float().cpu()
    try:
        got = _run_exported(path, fmt, pixels)
    except Exception as e:
        raise ExportError(
            f"method {method.name!r}: the exported {fmt} file does not run: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from e
    if got.shape != expected.shape:
        raise ExportError(
            f"method {method.name!r}: the exported {fmt} file gives logits of shape "
            f"{tuple(got.shape)} for {batch} images, expected {tuple(expected.shape)}"
        )
    scale = float(expected.abs().max()) or 1.0
    err = float((got - expected).abs().max()) / scale
    if not err <= RTOL:
        raise ExportError(
            f"method {method.name!r}: the exported {fmt} file's logits differ from fewclip's "
            f"by {err:.2e} relative (tolerance {RTOL:.0e}); it was not written"
        )
