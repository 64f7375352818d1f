"""The HTTP service of ``fewclip serve``: a fitted adapter behind FastAPI.

Routes (JSON unless said otherwise):

- ``POST /predict?k=5``: images as ``multipart/form-data`` file fields; per image, in order,
  its file name and top-k classes with probabilities, or the reason it could not be read.
- ``POST /predict/features?k=5``: ``{"features": [[...], ...]}`` raw image features (N, D).
- ``GET /health`` (the process answers), ``GET /ready`` (the model is loaded and warmed up),
  ``GET /info`` (method, backbone, classes, versions, adapter digest, limits),
  ``GET /metrics`` (Prometheus text), ``GET /docs`` (OpenAPI, as FastAPI gives it).

Bad input gets a 4xx with ``{"detail": ...}``, never a 500: a body over ``max_upload_mb`` 413,
more images than ``max_images`` 413, a body that is not a form 400/415, no image at all 422,
features of the wrong length or not finite 422. One undecodable image (not an image, truncated,
empty, more pixels than ``max_pixels``) fails only its own entry; a request where no image
could be read is a 422 that lists each reason. Uploads stay in memory, nothing is written to
disk. With an API key, every route but ``/health``, ``/ready`` and the docs needs
``Authorization: Bearer <key>``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from torch import Tensor

from fewclip._version import __version__
from fewclip.adapter import Adapter
from fewclip.backbones.base import Backbone
from fewclip.imageio import ImageDecodeError, decode_image
from fewclip.serve.batcher import DynamicBatcher
from fewclip.serve.metrics import CONTENT_TYPE_LATEST, ServerMetrics
from fewclip.serve.uploads import BadForm, BodyTooLarge, Upload, parse_multipart, read_body

__all__ = ["CONFIG_ENV", "ServeConfig", "create_app", "create_app_from_env"]

CONFIG_ENV = "FEWCLIP_SERVE_CONFIG"
"""Environment variable through which ``fewclip serve --workers N`` passes the configuration
to each worker process (JSON of :class:`ServeConfig`; the API key travels separately in
``FEWCLIP_API_KEY``)."""

ACCESS_LOG = logging.getLogger("fewclip.serve.access")


@dataclass(frozen=True)
class ServeConfig:
    """What ``fewclip serve`` was asked for (see ``fewclip serve --help``)."""

    adapter: str
    backbone: str | None = None
    pretrained: str | None = None
    device: str = "cpu"
    precision: str = "amp"
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_upload_mb: float = 32.0
    max_images: int = 64
    max_pixels: int = 40_000_000
    top_k: int = 5

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    def to_json(self) -> str:
        return json.dumps(asdict(self))


class _Model:
    """The loaded adapter and backbone: preprocessing, and probabilities for a batch."""

    def __init__(self, adapter: Adapter, backbone: Backbone, max_pixels: int) -> None:
        self.adapter = adapter
        self.backbone = backbone
        self.transform = backbone.eval_transform
        self.max_pixels = max_pixels

    def preprocess(self, uploads: Sequence[Upload]) -> tuple[list[Tensor | None], list[str]]:
        """Per upload, its (3, H, W) tensor or ``None`` and the reason it could not be read."""
        tensors: list[Tensor | None] = []
        errors: list[str] = []
        for up in uploads:
            try:
                img = decode_image(up.data, max_pixels=self.max_pixels)
                tensors.append(self.transform(img))
                errors.append("")
            except ImageDecodeError as e:
                tensors.append(None)
                errors.append(e.reason)
        return tensors, errors

    def probabilities(self, pixels: Tensor) -> Tensor:
        return self.adapter.method.predict_proba(self.backbone.encode_images(pixels)).cpu()

    def feature_probabilities(self, features: Tensor) -> Tensor:
        return self.adapter.method.predict_proba(features).cpu()


def _top(probs: Tensor, names: list[str], k: int) -> list[dict[str, Any]]:
    values, ids = probs.topk(min(k, len(names)))
    return [
        {"label": int(i), "class": names[int(i)], "prob": float(p)}
        for p, i in zip(values.tolist(), ids.tolist(), strict=True)
    ]


def _auth(api_key: str | None) -> Any:
    def check(request: Request) -> None:
        if not api_key:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), api_key.encode()
        ):
            raise HTTPException(
                401,
                "missing or wrong API key: send the header 'Authorization: Bearer <key>' "
                "(the key given to fewclip serve --api-key or FEWCLIP_API_KEY)",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return Depends(check)


_PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                }
            }
        },
    }
}


def create_app(
    config: ServeConfig,
    *,
    adapter: Adapter | None = None,
    backbone: Backbone | None = None,
    api_key: str | None = None,
) -> FastAPI:
    """The FastAPI application for ``config`` (the adapter and backbone are loaded here unless
    given already loaded)."""
    if adapter is None:
        adapter = Adapter.load(config.adapter)
    if backbone is None:
        backbone = adapter.load_backbone(
            name=config.backbone,
            pretrained=config.pretrained,
            device=config.device,
            precision=config.precision,
        )
    else:
        adapter.check_backbone(backbone)
    model = _Model(adapter, backbone, config.max_pixels)
    metrics = ServerMetrics()
    batcher = DynamicBatcher(
        model.probabilities,
        max_batch=config.max_batch,
        max_wait=config.max_wait_ms / 1000,
        on_batch=metrics.batch_size.observe,
    )
    state = {"ready": False}
    names = adapter.classnames
    dim = adapter.method.n_features_in_

    async def warm_up() -> None:
        h, w = backbone.preprocess.size
        await batcher.run(model.probabilities, torch.zeros(1, 3, h, w))
        state["ready"] = True

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        task = asyncio.create_task(warm_up())
        try:
            yield
        finally:
            task.cancel()
            await batcher.stop()

    app = FastAPI(
        title="fewclip",
        version=__version__,
        description=f"{adapter.method.name} adapter over {len(names)} classes on "
        f"{backbone.name}: POST images to /predict.",
        lifespan=lifespan,
    )
    app.state.model = model
    app.state.metrics = metrics
    app.state.batcher = batcher
    auth = _auth(api_key)

    @app.middleware("http")
    async def access_log(request: Request, call_next: Any) -> Response:
        t0 = time.perf_counter()
        request.state.batch_sizes = []
        request.state.images = 0
        response: Response = await call_next(request)
        latency = time.perf_counter() - t0
        route = getattr(request.scope.get("route"), "path", "<unmatched>")
        metrics.requests.labels(request.method, route, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(latency)
        sizes = request.state.batch_sizes
        record = {
            "method": request.method,
            "path": request.url.path,
            "status": response.status_code,
            "latency_ms": round(latency * 1000, 2),
            "images": request.state.images,
            "batch_size": max(sizes) if sizes else 0,
        }
        ACCESS_LOG.info(json.dumps(record))
        return response

    @app.exception_handler(BodyTooLarge)
    async def too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=413)

    @app.exception_handler(BadForm)
    async def bad_form(request: Request, exc: BadForm) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.get("/health")
    async def health() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/ready", responses={503: {"description": "still loading or warming up"}})
    async def ready() -> JSONResponse:
        """Readiness: the model is loaded and has run once."""
        if state["ready"]:
            return JSONResponse({"ready": True})
        return JSONResponse({"ready": False, "detail": "warming up"}, status_code=503)

    @app.get("/info", dependencies=[auth])
    async def info() -> dict[str, Any]:
        """The adapter, its backbone, the classes and the server's limits."""
        pre = backbone.preprocess
        return {
            "method": adapter.method.name,
            "params": adapter.info.get("params", {}),
            "classes": names,
            "n_classes": len(names),
            "feature_dim": dim,
            "backbone": {
                "name": backbone.name,
                "id": backbone.id,
                "device": str(backbone.device),
                "precision": backbone.compute_precision,
            },
            "input": {"size": list(pre.size), "resize_mode": pre.resize_mode},
            "adapter_sha256": adapter.sha256,
            "fewclip_version": __version__,
            "limits": {
                "max_batch": config.max_batch,
                "max_images": config.max_images,
                "max_upload_mb": config.max_upload_mb,
                "max_pixels": config.max_pixels,
            },
        }

    @app.get("/metrics", dependencies=[auth])
    async def prometheus() -> Response:
        """Counters and histograms in the Prometheus text format."""
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/predict", dependencies=[auth], openapi_extra=_PREDICT_BODY)
    async def predict(
        request: Request,
        k: int = Query(config.top_k, ge=1, le=1000, description="Classes to return per image."),
    ) -> JSONResponse:
        """Classify uploaded images (multipart file fields, any field name)."""
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            raise HTTPException(
                415,
                f"expected images as multipart/form-data file fields, found content type "
                f"{content_type or 'none'!r} (e.g. curl -F files=@cat.jpg .../predict)",
            )
        body = await read_body(request, config.max_upload_bytes)
        uploads = parse_multipart(content_type, body)
        if not uploads:
            raise HTTPException(
                422,
                "no image files in the form: send each image as a file field "
                "(e.g. curl -F files=@cat.jpg .../predict)",
            )
        if len(uploads) > config.max_images:
            raise HTTPException(
                413,
                f"{len(uploads)} images in one request, more than the server's "
                f"--max-images {config.max_images}: send them in several requests",
            )
        request.state.images = len(uploads)
        tensors, errors = await run_in_threadpool(model.preprocess, uploads)
        good = [t for t in tensors if t is not None]
        out: list[dict[str, Any]] = []
        if good:
            probs, sizes = await batcher.submit(torch.stack(good))
            request.state.batch_sizes = sizes
        rows = iter(range(len(good)))
        for up, t, err in zip(uploads, tensors, errors, strict=True):
            if t is None:
                out.append({"file": up.filename, "error": err})
            else:
                out.append({"file": up.filename, "top": _top(probs[next(rows)], names, k)})
        metrics.images.labels("classified").inc(len(good))
        metrics.images.labels("rejected").inc(len(uploads) - len(good))
        if not good:
            return JSONResponse(
                {"detail": "no image could be read", "predictions": out}, status_code=422
            )
        return JSONResponse({"predictions": out})

    @app.post("/predict/features", dependencies=[auth])
    async def predict_features(
        request: Request,
        k: int = Query(config.top_k, ge=1, le=1000, description="Classes to return per row."),
    ) -> JSONResponse:
        """Classify raw image features: ``{"features": [[x_1, ..., x_D], ...]}``."""
        body = await read_body(request, config.max_upload_bytes)
        features = _parse_features(body, dim, config.max_images)
        probs = await batcher.run(model.feature_probabilities, features)
        return JSONResponse({"predictions": [{"top": _top(p, names, k)} for p in probs]})

    return app


def _parse_features(body: bytes, dim: int, max_rows: int) -> Tensor:
    """The (N, D) float32 tensor of a ``{"features": [...]}`` body, or a 422/413."""
    expected = f'expected JSON {{"features": [[...], ...]}} with rows of {dim} numbers'
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise HTTPException(422, f"body is not JSON: {expected}") from None
    rows = payload.get("features") if isinstance(payload, dict) else None
    if not isinstance(rows, list) or not rows:
        raise HTTPException(422, f"no 'features' list in the body: {expected}")
    if len(rows) > max_rows:
        raise HTTPException(
            413, f"{len(rows)} feature rows in one request, more than --max-images {max_rows}"
        )
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != dim:
            found = f"{len(row)} values" if isinstance(row, list) else type(row).__name__
            raise HTTPException(
                422,
                f"features[{i}]: expected {dim} numbers (the backbone's feature dimension), "
                f"found {found}",
            )
        if not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in row
        ):
            raise HTTPException(
                422, f"features[{i}]: expected finite numbers, found NaN, infinity or a non-number"
            )
    return torch.tensor(rows, dtype=torch.float32)


def create_app_from_env() -> FastAPI:
    """The app of one ``fewclip serve --workers N`` worker process (configuration from
    ``FEWCLIP_SERVE_CONFIG``, the API key from ``FEWCLIP_API_KEY``)."""
    config = ServeConfig(**json.loads(os.environ[CONFIG_ENV]))
    return create_app(config, api_key=os.environ.get("FEWCLIP_API_KEY") or None)
