"""`fewclip serve`: the installed command, a real uvicorn server on 127.0.0.1, spoken to over
HTTP with httpx. One server (small limits, so each limit can be hit) serves most tests; a
second one checks the API key with two worker processes."""

from __future__ import annotations

import io
import json
import signal
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tests._extras import require_extra
from tests.cli._server import Server
from tests.cli.conftest import run_fewclip

httpx = require_extra("httpx", "dev")

MAX_IMAGES = 5
MAX_PIXELS = 5000  # the 32 px test images have 1,024
KEY = "s3cret-key"


def _png(w: int = 32, h: int = 32, seed: int = 0) -> bytes:
    pixels = (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(opt_adapter):
    require_extra("fastapi", "serve")
    adapter, store, _ = opt_adapter
    srv = Server(
        adapter, "--max-batch", "4", "--max-wait-ms", "200", "--max-upload-mb", "0.25",
        "--max-images", str(MAX_IMAGES), "--max-pixels", str(MAX_PIXELS), "--top-k", "2",
        "--device", "cpu", "--precision", "fp32", "--host", "127.0.0.1", store=store,
    )  # fmt: skip
    url = srv.wait_listening()
    with httpx.Client(base_url=url, timeout=60) as client:
        srv.wait_ready(client)
        yield srv, client
    srv.stop()


@pytest.fixture(scope="module")
def reference(opt_adapter):
    """The adapter and its backbone in this process, for the expected answers."""
    from fewclip.adapter import Adapter

    adapter = Adapter.load(opt_adapter[0])
    return adapter, adapter.load_backbone(precision="fp32")


def test_health_ready_and_info(server, reference, opt_adapter):
    _srv, client = server
    adapter, backbone = reference
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"ready": True}
    info = client.get("/info").json()
    assert info["method"] == "zero-shot"
    assert info["classes"] == adapter.classnames == ["blue square", "green triangle", "red circle"]
    assert info["backbone"]["id"] == backbone.id
    assert info["backbone"]["name"] == "fewclip-tiny-vit"
    import hashlib

    digest = hashlib.sha256((opt_adapter[0] / "adapter.json").read_bytes()).hexdigest()
    assert info["adapter_sha256"] == digest
    assert info["limits"] == {
        "max_batch": 4, "max_images": MAX_IMAGES, "max_upload_mb": 0.25, "max_pixels": MAX_PIXELS,
    }  # fmt: skip
    from fewclip import __version__

    assert info["fewclip_version"] == __version__
    assert client.get("/docs").status_code == 200
    assert "/predict" in client.get("/openapi.json").json()["paths"]


def test_predict_gives_fewclips_probabilities_per_file(server, reference, opt_data, tmp_path):
    _srv, client = server
    adapter, backbone = reference
    paths = sorted((opt_data / "test").rglob("*.png"))[:3]
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in paths]
    res = client.post("/predict", files=files, params={"k": 3})
    assert res.status_code == 200, res.text
    expected = adapter.predict_images(backbone, [str(p) for p in paths], top_k=3, progress=False)
    got = res.json()["predictions"]
    assert [g["file"] for g in got] == [p.name for p in paths]
    for g, e in zip(got, expected, strict=True):
        assert [t["class"] for t in g["top"]] == e.names
        assert [t["label"] for t in g["top"]] == e.labels
        np.testing.assert_allclose([t["prob"] for t in g["top"]], e.probs, rtol=1e-5, atol=1e-7)
    default_k = client.post("/predict", files=files[:1]).json()["predictions"][0]
    assert len(default_k["top"]) == 2  # --top-k 2
    assert client.post("/predict", files=files[:1], params={"k": 0}).status_code == 422


def test_bad_images_fail_only_their_own_entry(server):
    srv, client = server
    good = _png()
    truncated = good[: len(good) // 2]
    big = _png(100, 60)  # 6,000 pixels > --max-pixels 5000
    files = [
        ("files", ("good.png", good, "image/png")),
        ("files", ("notes.txt", b"hello, not an image", "text/plain")),
        ("files", ("empty.png", b"", "image/png")),
        ("files", ("cut.png", truncated, "image/png")),
        ("files", ("bomb.png", big, "image/png")),
    ]
    res = client.post("/predict", files=files)
    assert res.status_code == 200
    out = res.json()["predictions"]
    assert [o["file"] for o in out] == ["good.png", "notes.txt", "empty.png", "cut.png", "bomb.png"]
    assert "top" in out[0]
    assert "error" not in out[0]
    assert out[1]["error"] == "not an image file PIL can read (unknown format)"
    assert out[2]["error"] == "empty file (0 bytes)"
    assert out[3]["error"].startswith(("truncated file", "corrupt or unreadable image data"))
    assert out[4]["error"] == (
        "image too large: 100×60 = 6,000 pixels, more than the limit of 5,000 (a guard "
        "against decompression bombs)"
    )
    only_bad = client.post("/predict", files=files[1:3])
    assert only_bad.status_code == 422
    assert only_bad.json()["detail"] == "no image could be read"
    assert [o["file"] for o in only_bad.json()["predictions"]] == ["notes.txt", "empty.png"]
    assert client.get("/health").status_code == 200
    assert srv.proc.poll() is None


def test_limits_and_malformed_requests_are_4xx(server):
    srv, client = server
    too_many = [("files", (f"{i}.png", _png(seed=i), "image/png")) for i in range(MAX_IMAGES + 1)]
    res = client.post("/predict", files=too_many)
    assert res.status_code == 413
    assert res.json()["detail"] == (
        "6 images in one request, more than the server's --max-images 5: send them in several "
        "requests"
    )
    huge = [("files", ("big.bin", b"\0" * (300 * 1024), "image/png"))]  # > 0.25 MiB
    res = client.post("/predict", files=huge)
    assert res.status_code == 413
    assert res.json()["detail"] == (
        "request body larger than 0.25 MiB (the server's --max-upload-mb)"
    )
    res = client.post("/predict", content=b"raw bytes", headers={"content-type": "image/png"})
    assert res.status_code == 415
    assert "expected images as multipart/form-data file fields" in res.json()["detail"]
    res = client.post("/predict", data={"note": "no files"}, files=[])
    assert res.status_code in (415, 422)
    res = client.post(
        "/predict",
        content=b'--xyz\r\nContent-Disposition: form-data; name="a"\r\n\r\nv\r\n--xyz--\r\n',
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )
    assert res.status_code == 422
    assert res.json()["detail"].startswith("no image files in the form")
    res = client.post("/predict", content=b"x", headers={"content-type": "multipart/form-data"})
    assert res.status_code == 400
    assert client.get("/nowhere").status_code == 404
    assert client.get("/predict").status_code == 405
    assert client.get("/health").status_code == 200
    assert srv.proc.poll() is None


def test_features_endpoint(server, reference):
    _srv, client = server
    adapter, _ = reference
    x = torch.randn(3, adapter.method.n_features_in_, generator=torch.Generator().manual_seed(0))
    res = client.post("/predict/features", json={"features": x.tolist()}, params={"k": 3})
    assert res.status_code == 200, res.text
    probs = adapter.method.predict_proba(x)
    for row, p in zip(res.json()["predictions"], probs, strict=True):
        top = p.topk(3)
        assert [t["label"] for t in row["top"]] == top.indices.tolist()
        np.testing.assert_allclose([t["prob"] for t in row["top"]], top.values, rtol=1e-5)
    d = adapter.method.n_features_in_
    short = client.post("/predict/features", json={"features": [[0.1, 0.2]]})
    assert short.status_code == 422
    assert short.json()["detail"] == (
        f"features[0]: expected {d} numbers (the backbone's feature dimension), found 2 values"
    )
    nan = client.post(
        "/predict/features",
        content=json.dumps({"features": [[float("nan")] * d]}),
        headers={"content-type": "application/json"},
    )
    assert nan.status_code == 422
    assert nan.json()["detail"] == (
        "features[0]: expected finite numbers, found NaN, infinity or a non-number"
    )
    assert client.post("/predict/features", content=b"{not json").status_code == 422
    assert client.post("/predict/features", json={"rows": []}).status_code == 422
    many = client.post("/predict/features", json={"features": [[0.0] * d] * (MAX_IMAGES + 1)})
    assert many.status_code == 413


def test_concurrent_requests_share_batches_and_get_their_own_answers(server, opt_data, reference):
    srv, client = server
    paths = sorted((opt_data / "test").rglob("*.png"))[::-1][:8]
    images = [p.read_bytes() for p in paths]
    solo = [
        client.post(
            "/predict", files=[("files", ("x.png", b, "image/png"))], params={"k": 3}
        ).json()
        for b in images
    ]
    before = _metric(client, "fewclip_batch_size_count")
    barrier = threading.Barrier(len(images))
    results: list[dict | None] = [None] * len(images)

    def post(i: int) -> None:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            barrier.wait()
            files = [("files", ("x.png", images[i], "image/png"))]
            results[i] = c.post("/predict", files=files, params={"k": 3}).json()

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(images))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # each request gets its own image's answer, as when alone (a batched matrix product may
    # round differently in the last bits)
    for got, alone in zip(results, solo, strict=True):
        assert got is not None
        top, top_alone = got["predictions"][0]["top"], alone["predictions"][0]["top"]
        assert [t["label"] for t in top] == [t["label"] for t in top_alone]
        np.testing.assert_allclose(
            [t["prob"] for t in top], [t["prob"] for t in top_alone], rtol=1e-4, atol=0
        )
    # and what fewclip predict computes for the same files
    adapter, backbone = reference
    expected = adapter.predict_images(backbone, [str(p) for p in paths], top_k=3, progress=False)
    for got, e in zip(results, expected, strict=True):
        assert got is not None
        top = got["predictions"][0]["top"]
        assert [t["label"] for t in top] == e.labels
        np.testing.assert_allclose([t["prob"] for t in top], e.probs, rtol=1e-4, atol=0)
    # the images' answers differ from each other by far more than that (so a mix-up shows)
    least = [r["predictions"][0]["top"][2]["prob"] for r in solo]
    assert len({f"{p:.3g}" for p in least}) == len(images), least
    batches = _metric(client, "fewclip_batch_size_count") - before
    assert batches < len(images)  # some forward passes served several requests at once


def _metric(client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def test_metrics_and_access_log(server):
    srv, client = server
    client.post("/predict", files=[("files", ("m.png", _png(), "image/png"))])
    text = client.get("/metrics").text
    assert "# TYPE fewclip_requests_total counter" in text
    assert 'fewclip_requests_total{method="POST",route="/predict",status="200"}' in text
    assert "# TYPE fewclip_request_latency_seconds histogram" in text
    assert "# TYPE fewclip_batch_size histogram" in text
    assert _metric(client, 'fewclip_images_total{outcome="classified"}') >= 1
    logs = [json.loads(line) for line in srv.lines if line.startswith("{")]
    predicted = [r for r in logs if r["path"] == "/predict" and r["status"] == 200]
    assert predicted
    assert set(predicted[-1]) == {
        "method",
        "path",
        "status",
        "latency_ms",
        "images",
        "batch_size",
    }
    assert predicted[-1]["images"] == 1
    assert predicted[-1]["batch_size"] >= 1


def test_api_key_with_two_workers(opt_adapter):
    require_extra("fastapi", "serve")
    adapter, store, _ = opt_adapter
    srv = Server(adapter, "--workers", "2", "-q", store=store, env={"FEWCLIP_API_KEY": KEY})
    try:
        url = srv.wait_listening()
        with httpx.Client(base_url=url, timeout=60) as client:
            srv.wait_ready(client)
            files = [("files", ("a.png", _png(), "image/png"))]
            assert client.get("/health").status_code == 200  # probes need no key
            denied = client.post("/predict", files=files)
            assert denied.status_code == 401
            assert denied.headers["www-authenticate"] == "Bearer"
            wrong = {"Authorization": "Bearer nope"}
            assert client.post("/predict", files=files, headers=wrong).status_code == 401
            assert client.get("/info").status_code == 401
            assert client.get("/metrics").status_code == 401
            ok = {"Authorization": f"Bearer {KEY}"}
            for _ in range(4):
                assert client.post("/predict", files=files, headers=ok).status_code == 200
    finally:
        code = srv.stop()
    assert not any(line.startswith("fewclip serve:") for line in srv.lines)  # -q
    # SIGTERM: a graceful shutdown of the parent and both workers, exit status 0
    assert code == 0
    assert srv.lines.count("Application shutdown complete.") == 2
    assert any(line.startswith("Stopping parent process") for line in srv.lines)


def test_api_key_option_and_refusals_before_serving(opt_adapter, tmp_path: Path):
    require_extra("fastapi", "serve")
    adapter, store, _ = opt_adapter
    srv = Server(adapter, "--api-key", KEY, store=store)
    try:
        with httpx.Client(base_url=srv.wait_listening(), timeout=60) as client:
            srv.wait_ready(client)
            assert client.get("/info").status_code == 401
            assert client.get("/info", headers={"Authorization": f"Bearer {KEY}"}).json()
    finally:
        code = srv.stop()
    # SIGTERM: uvicorn shuts down gracefully (lifespan shutdown runs), then re-raises the
    # signal, so a single-process server ends as terminated by it (the shell's 143)
    assert code == -signal.SIGTERM
    assert "Application shutdown complete." in srv.lines
    assert any(line.startswith("fewclip serve: zero-shot over 3 classes") for line in srv.lines)
    mismatch = run_fewclip("serve", adapter, "-b", "fewclip-tiny-rn", store=store, timeout=120)
    assert mismatch.returncode == 4
    assert "but the adapter was fitted on 'fewclip-tiny-vit'" in mismatch.stderr
    missing = run_fewclip("serve", tmp_path / "nope", store=store, timeout=120)
    assert missing.returncode == 1
    assert missing.stderr == f"error: {tmp_path / 'nope'}: no such adapter folder\n"
    pre = run_fewclip(
        "serve", adapter, "--backbone", "fewclip-tiny-vit", "--pretrained", "nowhere.pt",
        store=store, timeout=120,
    )  # fmt: skip
    assert pre.returncode in (1, 3)


def test_an_exposed_host_without_a_key_is_warned_about(opt_adapter):
    """203.0.113.1 (TEST-NET-3) is no address of this machine: the warning comes, then the
    bind fails, so nothing is ever exposed by the test."""
    require_extra("fastapi", "serve")
    adapter, store, _ = opt_adapter
    res = run_fewclip("serve", adapter, "--host", "203.0.113.1", "--port", "0", store=store)
    assert res.returncode != 0
    assert (
        "warning: listening on 203.0.113.1 without an API key: anyone who can reach this port "
        "can use the model; set --api-key or FEWCLIP_API_KEY"
    ) in res.stderr
