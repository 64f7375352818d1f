"""`fewclip fit -b RN50` without local weights: exit 3 at once, one clean message.

Runs the installed console script in a fresh process with an empty Hugging Face cache, once in
offline mode and once "online" with the Hub endpoint on a closed local port (no network is
touched either way). "At once" is checked without a clock: a ``sitecustomize`` module on the
child's path logs every socket connection it opens, and the test counts them (the slow path
this guards against was huggingface_hub retrying the closed port for about a minute).
"""

from __future__ import annotations

import os
import socket
import textwrap
from pathlib import Path

import pytest

from fewclip.testing.images import make_shapes_dataset

from .conftest import run_fewclip

_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_CONNECT_LOGGER = textwrap.dedent(
    """
    import os, socket

    _log = os.environ["FEWCLIP_TEST_CONNECT_LOG"]
    _connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex

    def _record(address):
        with open(_log, "a") as f:
            f.write(repr(address) + "\\n")

    def connect(self, address):
        _record(address)
        return _connect(self, address)

    def connect_ex(self, address):
        _record(address)
        return _connect_ex(self, address)

    socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
    """
)


def logging_connections(tmp_path: Path, env: dict[str, str]) -> Path:
    """Make the child process log each socket connection it opens; returns the log file."""
    site = tmp_path / "connect-logger"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_CONNECT_LOGGER)
    log = tmp_path / "connections.log"
    log.touch()
    env["PYTHONPATH"] = str(site)
    env["FEWCLIP_TEST_CONNECT_LOG"] = str(log)
    return log


def test_the_connection_logger_sees_a_connection(tmp_path: Path) -> None:
    """The logger itself works: a child that opens one connection logs exactly one."""
    import subprocess
    import sys

    env: dict[str, str] = {}
    log = logging_connections(tmp_path, env)
    port = closed_port()
    code = f"import socket; socket.socket().connect_ex(('127.0.0.1', {port}))"
    subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, check=True)
    assert log.read_text().splitlines() == [repr(("127.0.0.1", port))]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    make_shapes_dataset(
        root,
        classes=("red_circle", "blue_square"),
        per_class={"train": 6, "test": 2},
        size=32,
    )
    return root


@pytest.mark.parametrize("network", ["offline", "unreachable"])
def test_fit_with_missing_rn50_exits_3_fast(tmp_path: Path, shapes: Path, network: str) -> None:
    hf_home = tmp_path / "hf-home"
    env = {"HF_HOME": str(hf_home), "HF_HUB_CACHE": str(hf_home / "hub")}
    env.update(dict.fromkeys(_PROXY_VARS, ""))
    log = logging_connections(tmp_path, env)
    args = ("fit", "-b", "RN50", "-m", "zero-shot", "-d", shapes, "-o", tmp_path / "ad")
    port = closed_port()
    env["HF_ENDPOINT"] = f"http://127.0.0.1:{port}"
    if network == "offline":
        proc = run_fewclip(*args, store=tmp_path / "store", env=env, timeout=120)
    else:
        proc = run_fewclip(*args, store=tmp_path / "store", env=env, timeout=120, offline=False)
    assert proc.returncode == 3, proc.stderr
    # offline: not one connection; unreachable: the one probe, no retry
    expected = [] if network == "offline" else [repr(("127.0.0.1", port))]
    assert log.read_text().splitlines() == expected
    err = proc.stderr
    assert "error: Model 'RN50' (open_clip RN50-quickgelu with the openai weights) cannot be" in err
    assert str(hf_home / "hub") in err
    assert "-b local-dir:PATH" in err
    assert "--pretrained FILE" in err
    assert "HF_HOME" in err
    if network == "offline":
        assert "offline mode is on (HF_HUB_OFFLINE is set)" in err
    else:
        assert f"http://127.0.0.1:{port} cannot be reached" in err
    assert "Traceback" not in err
    assert "retry" not in (err + proc.stdout).lower()
    assert "b.load(" not in err
    # one error message, one paragraph (other lines are the CLI's own notes)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert errors[0].endswith("mean nothing."), err
    assert err.count("RN50-quickgelu") == errors[0].count("RN50-quickgelu")


def test_no_backbone_given_never_downloads_and_lists_the_local_ones(
    tmp_path: Path, shapes: Path
) -> None:
    hf_home = tmp_path / "hf-home"
    env = {"HF_HOME": str(hf_home), "HF_HUB_CACHE": str(hf_home / "hub")}
    env.update(dict.fromkeys(_PROXY_VARS, ""))
    env["HF_ENDPOINT"] = f"http://127.0.0.1:{closed_port()}"
    log = logging_connections(tmp_path, env)
    proc = run_fewclip(
        "fit", "-m", "zero-shot", "-d", shapes, "-o", tmp_path / "ad",
        store=tmp_path / "store", env=env, timeout=120, offline=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert log.read_text() == ""  # not even the probe: nothing is looked up
    assert not hf_home.exists()  # and no cache is touched
    err = proc.stderr
    assert "no backbone given" in err
    assert "No real CLIP weights are on this machine" in err
    assert "-b fewclip-tiny-vit" in err
    assert "-b local-dir:PATH" in err
    assert "Traceback" not in err
    assert not (tmp_path / "ad").exists()
