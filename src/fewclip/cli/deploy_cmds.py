"""`fewclip serve` and `fewclip export`: use a fitted adapter outside fewclip."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from fewclip.cli._app import app
from fewclip.cli._common import (
    DEVICE_OPTION,
    EXIT_USAGE,
    PRECISION_OPTION,
    QUIET_HELP,
    CLIError,
    echo,
)

ADAPTER_HELP = "Adapter folder written by `fewclip fit`."
_SUFFIX_FORMATS = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript"}


@app.command()
def serve(
    adapter: Path = typer.Argument(..., help=ADAPTER_HELP),
    host: str = typer.Option(
        "127.0.0.1", help="Address to listen on (0.0.0.0: every interface; set --api-key)."
    ),
    port: int = typer.Option(8000, min=0, max=65535, help="TCP port (0: any free port)."),
    workers: int = typer.Option(
        1, min=1, help="Server processes, each with its own copy of the model."
    ),
    max_batch: int = typer.Option(
        32, "--max-batch", min=1, help="Most images in one forward pass (dynamic batching)."
    ),
    max_wait_ms: float = typer.Option(
        5.0,
        "--max-wait-ms",
        min=0.0,
        help="How long the first waiting image waits for others to share its batch.",
    ),
    max_upload_mb: float = typer.Option(
        32.0, "--max-upload-mb", min=0.001, help="Largest request body (HTTP 413 beyond)."
    ),
    max_images: int = typer.Option(
        64, "--max-images", min=1, help="Most images (or feature rows) in one request."
    ),
    max_pixels: int = typer.Option(
        40_000_000,
        "--max-pixels",
        min=1,
        help="Largest image (width x height) decoded: a guard against decompression bombs.",
    ),
    top_k: int = typer.Option(5, "--top-k", "-k", min=1, help="Default classes per image (?k=)."),
    api_key: str | None = typer.Option(
        None,
        "--api-key",
        envvar="FEWCLIP_API_KEY",
        help="Require 'Authorization: Bearer KEY' (default: $FEWCLIP_API_KEY; none: open).",
        show_default=False,
    ),
    backbone: str | None = typer.Option(
        None, "--backbone", "-b", help="Load the backbone from here instead (same id required)."
    ),
    pretrained: str | None = typer.Option(None, help="Weights for --backbone."),
    device: str = DEVICE_OPTION,
    precision: str = PRECISION_OPTION,
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP),
) -> None:
    """Serve an adapter over HTTP: POST images to /predict, get top-k classes.

    Loads the backbone and the adapter once, then batches concurrent requests. Routes:
    POST /predict (multipart images), POST /predict/features (JSON features), GET /health,
    /ready, /info, /metrics (Prometheus), /docs (OpenAPI). Listens on 127.0.0.1 unless --host
    says otherwise. Needs the serve extra: pip install 'fewclip[serve]'.

    \b
    Example:
      fewclip serve ./my-adapter --port 8000
      curl -F files=@cat.jpg 'http://127.0.0.1:8000/predict?k=3'
    """
    from fewclip import serve as srv

    srv.check_installed()
    from fewclip.adapter import Adapter
    from fewclip.serve.app import ServeConfig, create_app

    config = ServeConfig(
        adapter=str(adapter),
        backbone=backbone,
        pretrained=pretrained,
        device=device,
        precision=precision,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        max_upload_mb=max_upload_mb,
        max_images=max_images,
        max_pixels=max_pixels,
        top_k=top_k,
    )
    ad = Adapter.load(adapter)  # a bad folder or a backbone mismatch fails here, with its code
    bb = ad.load_backbone(name=backbone, pretrained=pretrained, device=device, precision=precision)
    if port == 0:
        port = srv.free_port(host)
    if not srv.is_loopback(host) and not api_key:
        echo(
            f"warning: listening on {host} without an API key: anyone who can reach this "
            "port can use the model; set --api-key or FEWCLIP_API_KEY",
            err=True,
        )
    echo(
        f"fewclip serve: {ad.method.name} over {len(ad.classnames)} classes on {bb.name} "
        f"({bb.device}), http://{host}:{port} (docs at /docs)",
        quiet=quiet,
        err=True,
    )
    app_ = None if workers > 1 else create_app(config, adapter=ad, backbone=bb, api_key=api_key)
    srv.run(config, host=host, port=port, workers=workers, api_key=api_key, app=app_)


@app.command()
def export(
    adapter: Path = typer.Argument(..., help=ADAPTER_HELP),
    output: Path = typer.Option(..., "--output", "-o", help="The model file to write."),
    fmt: str | None = typer.Option(
        None,
        "--format",
        "-f",
        help="onnx or torchscript (default: from the suffix of --output, .pt/.ts: torchscript, "
        "else onnx).",
        show_default=False,
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace a model file fewclip exported at --output."
    ),
    backbone: str | None = typer.Option(
        None, "--backbone", "-b", help="Load the backbone from here instead (same id required)."
    ),
    pretrained: str | None = typer.Option(None, help="Weights for --backbone."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP),
) -> None:
    """Export an adapter and its image encoder as one model file (ONNX or TorchScript).

    The model takes pixels in [0, 1], shape (batch, 3, H, W), resized and centre-cropped as
    the backbone's preprocessing says, and returns class logits (batch, C); the class names
    and the preprocessing are in the file's metadata (key 'fewclip'). The file is checked
    against fewclip's own logits before it is kept. ONNX needs the export extra:
    pip install 'fewclip[export]'.

    \b
    Example:
      fewclip export ./my-adapter -o my-adapter.onnx
    """
    from fewclip.adapter import Adapter
    from fewclip.export import FORMATS, export_adapter, read_metadata

    by_suffix = _SUFFIX_FORMATS.get(output.suffix.lower())
    if fmt is None:
        fmt = by_suffix or "onnx"
    elif fmt not in FORMATS:
        raise CLIError(f"--format: expected one of {', '.join(FORMATS)}, found {fmt!r}", EXIT_USAGE)
    elif by_suffix is not None and by_suffix != fmt:
        raise CLIError(
            f"--format {fmt} with --output {output}: the suffix {output.suffix} says {by_suffix}; "
            "change one of them",
            EXIT_USAGE,
        )
    ad = Adapter.load(adapter)
    bb = ad.load_backbone(name=backbone, pretrained=pretrained, device="cpu", precision="fp32")
    path = export_adapter(ad, output, format=fmt, backbone=bb, overwrite=overwrite)
    meta = read_metadata(path)
    size = os.path.getsize(path)
    h, w = meta["input"]["shape"][2:]
    echo(
        f"wrote {path} ({size / 2**20:.1f} MiB, {fmt}): {meta['method']} over "
        f"{len(meta['classnames'])} classes; input '{meta['input']['name']}' (batch, 3, {h}, "
        f"{w}) pixels in [0, 1], resize {meta['input']['resize_mode']} "
        f"({meta['input']['interpolation']}); output '{meta['output']['name']}' (batch, "
        f"{len(meta['classnames'])})",
        quiet=quiet,
    )
