"""A named model without local weights fails fast, never retries, and says how to fix it.

Nothing here touches the network: "online" tests point huggingface_hub at a closed local port
or at a tiny local HTTP server, and cache tests build fake files in the Hugging Face cache
layout (models--org--repo/refs/main + snapshots/<rev>/file).
"""

from __future__ import annotations

import copy
import http.server
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import open_clip
import pytest
import torch
from huggingface_hub import constants
from torch import nn

import fewclip.backbones as fb
from fewclip.backbones import base
from fewclip.backbones.names import OPENAI_ALIASES, TINY_NAMES

RN50_REPO = "timm/resnet50_clip.openai"
REV = "0123456789abcdef0123456789abcdef01234567"
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def closed_port() -> int:
    """A local TCP port with nothing listening on it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def use_endpoint(monkeypatch: pytest.MonkeyPatch, endpoint: str | None) -> None:
    """Switch huggingface_hub to online mode against ``endpoint``, or to offline mode (None)."""
    monkeypatch.setattr(base, "_probe_results", {})
    for var in _PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    if endpoint is None:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        return
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    template = endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)


def cache_file(cache: Path, repo: str, filename: str, content: bytes | str = b"") -> Path:
    """Put ``filename`` of ``repo`` into a Hugging Face cache folder (main revision)."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(REV)
    path = folder / "snapshots" / REV / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        path.write_text(content)
    else:
        path.write_bytes(content)
    return path


def check_message(msg: str, cache: Path) -> None:
    """The RN50 message: complete, one paragraph, no Python, names places and remedies."""
    assert "'RN50'" in msg
    assert "RN50-quickgelu" in msg
    assert RN50_REPO in msg
    assert "open_clip_model.safetensors" in msg
    assert str(cache) in msg
    for remedy in ("-b local-dir:PATH", "--pretrained FILE", "HF_HOME", "fewclip-tiny-vit"):
        assert remedy in msg
    assert "b.load(" not in msg
    assert "load(" not in msg
    assert "pretrained=" not in msg
    assert "python" not in msg.lower()
    assert "\n" not in msg
    assert msg.endswith("mean nothing.")
    assert msg.count("(") == msg.count(")")


def test_offline_missing_model_fails_fast_with_complete_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, connections: list[tuple[str, int]]
) -> None:
    use_endpoint(monkeypatch, None)
    cache = tmp_path / "hub"
    with pytest.raises(fb.WeightsNotFoundError) as err:
        fb.load("RN50", cache_dir=cache)
    assert connections == []  # offline: nothing to wait for, not even a probe
    msg = str(err.value)
    check_message(msg, cache)
    assert "offline mode is on (HF_HUB_OFFLINE is set)" in msg
    assert "unset HF_HUB_OFFLINE" in msg


def test_default_cache_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_endpoint(monkeypatch, None)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "home" / "hub"))
    with pytest.raises(fb.WeightsNotFoundError) as err:
        fb.load("RN50")
    check_message(str(err.value), tmp_path / "home" / "hub")


def test_unreachable_hub_fails_fast_without_retries(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    connections: list[tuple[str, int]],
) -> None:
    port = closed_port()
    use_endpoint(monkeypatch, f"http://127.0.0.1:{port}")
    cache = tmp_path / "hub"
    with pytest.raises(fb.WeightsNotFoundError) as err:
        fb.load("RN50", cache_dir=cache)
    assert connections == [("127.0.0.1", port)]  # one probe, refused; no download, no retry
    msg = str(err.value)
    check_message(msg, cache)
    assert f"http://127.0.0.1:{port} cannot be reached" in msg
    assert "refused the connection" in msg
    out, errs = capfd.readouterr()
    assert "retry" not in (out + errs).lower()


def test_a_hanging_connection_is_cut_at_the_probe_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A connection attempt (or name lookup) that never returns: the probe gives up after its
    own timeout instead of waiting for it. Checked without a clock: the probe returns while
    the attempt is still blocked, and it waited for it with a bounded join."""
    release, attempts, returned = threading.Event(), [], threading.Event()

    def hang(address: tuple[str, int], timeout: float | None = None) -> socket.socket:
        attempts.append((address, timeout))
        release.wait(30)
        returned.set()
        raise TimeoutError

    joins: list[float | None] = []

    class Thread(threading.Thread):
        def join(self, timeout: float | None = None) -> None:
            joins.append(timeout)
            super().join(timeout)

    use_endpoint(monkeypatch, "https://hub.invalid")
    monkeypatch.setattr(base.socket, "create_connection", hang)
    monkeypatch.setattr(base.threading, "Thread", Thread)
    try:
        reason = base.hub_unreachable_reason(timeout=0.3)
        assert not returned.is_set()  # the probe did not wait for the hanging attempt
    finally:
        release.set()
    assert attempts == [(("hub.invalid", 443), 0.3)]  # the socket got the probe's timeout
    assert len(joins) == 1
    assert joins[0] is not None
    assert joins[0] <= 0.3 + 0.5  # and the probe waited about that long for it, not 30 s
    assert reason is not None
    assert "no answer from hub.invalid:443 within 0.3 s" in reason


def test_the_probe_goes_to_the_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    use_endpoint(monkeypatch, "https://hub.example")
    port = closed_port()
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
    reason = base.hub_unreachable_reason()
    assert reason is not None
    assert f"through the proxy http://127.0.0.1:{port}" in reason
    assert f"127.0.0.1:{port} refused the connection" in reason


class _Handler(http.server.BaseHTTPRequestHandler):
    status = 503
    requests: list[str]

    def do_HEAD(self) -> None:
        self.requests.append(self.path)
        self.send_response(self.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hub_server() -> Iterator[type[_Handler]]:
    """A local HTTP server standing in for a broken Hub; set ``.status`` before use."""
    handler = type("Handler", (_Handler,), {"requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    handler.endpoint = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    try:
        yield handler
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (503, "answered HTTP 503 for timm/resnet50_clip.openai/open_clip_model.safetensors"),
        (404, "has none of these files in timm/resnet50_clip.openai"),
    ],
)
def test_hub_errors_fail_fast_without_retries(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    hub_server: type[_Handler],
    status: int,
    expected: str,
) -> None:
    hub_server.status = status
    use_endpoint(monkeypatch, hub_server.endpoint)  # type: ignore[attr-defined]
    with pytest.raises(fb.WeightsNotFoundError) as err:
        fb.load("RN50", cache_dir=tmp_path / "hub")
    msg = str(err.value)
    check_message(msg, tmp_path / "hub")
    assert expected in msg
    # one request per file at most: no retry loop (other paths: huggingface_hub's telemetry)
    file_requests = [r for r in hub_server.requests if "/resolve/" in r]
    assert len(file_requests) == (1 if status == 503 else 2)
    out, errs = capfd.readouterr()
    assert "retry" not in (out + errs).lower()


def test_cached_file_is_used_without_the_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_endpoint(monkeypatch, f"http://127.0.0.1:{closed_port()}")

    def no_probe(*args: object) -> str:
        raise AssertionError("the network was probed although the file is cached")

    monkeypatch.setattr(base, "_tcp_probe", no_probe)
    path = cache_file(tmp_path, RN50_REPO, "open_clip_pytorch_model.bin")
    got = base.fetch_hub_file(
        RN50_REPO,
        ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"],
        cache_dir=tmp_path,
    )
    assert Path(got) == path


def test_hf_model_unreachable_fails_fast(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    connections: list[tuple[str, int]],
) -> None:
    pytest.importorskip("transformers")
    port = closed_port()
    use_endpoint(monkeypatch, f"http://127.0.0.1:{port}")
    with pytest.raises(fb.WeightsNotFoundError) as err:
        fb.load("hf:openai/clip-vit-base-patch32", cache_dir=tmp_path)
    assert connections == [("127.0.0.1", port)]  # one probe, refused; no download, no retry
    msg = str(err.value)
    assert "openai/clip-vit-base-patch32" in msg
    assert str(tmp_path) in msg
    assert "cannot be reached" in msg
    assert "-b hf:PATH" in msg
    assert "HF_HOME" in msg
    assert "\n" not in msg
    assert msg.endswith(".")
    out, errs = capfd.readouterr()
    assert "retry" not in (out + errs).lower()


def test_hf_model_offline_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("transformers")
    use_endpoint(monkeypatch, None)
    with pytest.raises(fb.WeightsNotFoundError) as err:
        fb.load("hf:openai/clip-vit-base-patch32", cache_dir=tmp_path)
    msg = str(err.value)
    assert "config.json, model.safetensors (or pytorch_model.bin) and tokenizer_config.json" in msg
    assert "HF_HUB_OFFLINE is set" in msg
    assert "\n" not in msg
    assert msg.endswith(".")


# --- local_backbones ------------------------------------------------------------------------


def test_local_backbones_on_an_empty_cache(
    tmp_path: Path, connections: list[tuple[str, int]]
) -> None:
    assert fb.local_backbones(tmp_path / "hub") == list(TINY_NAMES)
    assert fb.local_backbones(tmp_path / "missing") == list(TINY_NAMES)
    assert connections == []  # reads the cache folder only
    assert "local_backbones" in fb.__all__


def test_local_backbones_lists_cached_weights(tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    cache_file(cache, RN50_REPO, "open_clip_model.safetensors")
    # RN50, RN50-quickgelu + openai and the alias share these weights: listed once.
    assert fb.local_backbones(cache) == [*TINY_NAMES, "RN50"]

    laion = open_clip.get_pretrained_cfg("ViT-B-32", "laion2b_s34b_b79k")["hf_hub"]
    cache_file(cache, laion.rstrip("/"), "open_clip_pytorch_model.bin")
    names = fb.local_backbones(cache)
    assert names[: len(TINY_NAMES) + 1] == [*TINY_NAMES, "RN50"]
    assert "ViT-B-32 --pretrained laion2b_s34b_b79k" in names
    assert len(names) == len(TINY_NAMES) + 2


def test_local_backbones_needs_the_hf_tokenizer_too(tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    arch, tag = "ViT-B-16-SigLIP", "webli"
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    tokenizer_repo = open_clip.get_model_config(arch)["text_cfg"]["hf_tokenizer_name"]
    cache_file(cache, cfg["hf_hub"].rstrip("/"), "open_clip_model.safetensors")
    assert not any(n.startswith(arch + " ") for n in fb.local_backbones(cache))
    cache_file(cache, tokenizer_repo, "tokenizer_config.json", "{}")
    assert f"{arch} --pretrained {tag}" in fb.local_backbones(cache)


def test_local_backbones_lists_hub_and_transformers_repos(tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    config = {"model_cfg": copy.deepcopy(open_clip.get_model_config("RN50"))}
    cache_file(cache, "someone/my-clip", "open_clip_config.json", json.dumps(config))
    assert "hf-hub:someone/my-clip" not in fb.local_backbones(cache)  # no weights yet
    cache_file(cache, "someone/my-clip", "open_clip_model.safetensors")
    assert "hf-hub:someone/my-clip" in fb.local_backbones(cache)
    pytest.importorskip("transformers")
    repo = "openai/clip-vit-base-patch32"
    cache_file(cache, repo, "config.json", json.dumps({"model_type": "clip"}))
    cache_file(cache, repo, "model.safetensors")
    assert f"hf:{repo}" not in fb.local_backbones(cache)  # no tokenizer yet
    cache_file(cache, repo, "tokenizer_config.json", "{}")
    assert fb.local_backbones(cache)[-1] == f"hf:{repo}"


def test_every_openai_alias_has_a_hub_source() -> None:
    from fewclip.backbones.openclip import _tag_source

    for arch, tag in OPENAI_ALIASES.values():
        assert _tag_source(open_clip.get_pretrained_cfg(arch, tag)) is not None


# --- the --pretrained remedy works for OpenAI's own TorchScript checkpoints -----------------


def _torchscript_archive(state_dict: dict[str, torch.Tensor], path: Path) -> Path:
    """A TorchScript archive whose state_dict() is ``state_dict`` (the layout of RN50.pt)."""

    class Root(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    root = Root()
    for key, tensor in state_dict.items():
        *path_parts, leaf = key.split(".")
        module: nn.Module = root
        for part in path_parts:
            if not isinstance(getattr(module, part, None), nn.Module):
                module.add_module(part, nn.Module())
            module = getattr(module, part)
        module.register_buffer(leaf, tensor.clone())
    torch.jit.save(torch.jit.script(root), str(path))
    return path


@pytest.mark.filterwarnings("ignore:.*torch.jit.* is deprecated:FutureWarning")
def test_pretrained_torchscript_checkpoint_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fewclip.backbones.openclip import _is_torchscript
    from fewclip.backbones.tiny import TINY_CONFIGS

    ref = fb.load("fewclip-tiny-rn")
    archive = _torchscript_archive(ref.model.state_dict(), tmp_path / "tiny.pt")
    assert _is_torchscript(str(archive))
    monkeypatch.setitem(
        open_clip.factory._MODEL_CONFIGS,
        "fewclip-test-rn",
        copy.deepcopy(TINY_CONFIGS["fewclip-tiny-rn"]),
    )
    loaded = fb.load("fewclip-test-rn", pretrained=archive)
    assert loaded.weights_digest == ref.weights_digest
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(loaded.encode_images(x), ref.encode_images(x))


def test_hf_name_that_is_neither_folder_nor_repo_id(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    with pytest.raises(fb.WeightsNotFoundError, match="neither an existing folder nor a Hugging"):
        fb.load(f"hf:{tmp_path / 'missing'}", cache_dir=tmp_path)
