"""`fewclip fit -b RN50` without local weights: exit 3 within seconds, one clean message.

Runs the installed console script in a fresh process with an empty Hugging Face cache, once in
offline mode and once "online" with the Hub endpoint on a closed local port (no network is
touched either way).
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from fewclip.testing.images import make_shapes_dataset

from .conftest import run_fewclip

# The whole process: Python and torch start-up (a few seconds on a slow CI machine) plus the
# failure itself, which takes milliseconds. Without the fail-fast path it took about a minute.
WALL_LIMIT = 15.0
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    args = ("fit", "-b", "RN50", "-m", "zero-shot", "-d", shapes, "-o", tmp_path / "ad")
    start = time.perf_counter()
    if network == "offline":
        proc = run_fewclip(*args, store=tmp_path / "store", env=env, timeout=120)
    else:
        port = closed_port()
        env["HF_ENDPOINT"] = f"http://127.0.0.1:{port}"
        proc = run_fewclip(*args, store=tmp_path / "store", env=env, timeout=120, offline=False)
    wall = time.perf_counter() - start
    assert proc.returncode == 3, proc.stderr
    assert wall < WALL_LIMIT, f"took {wall:.1f} s"
    err = proc.stderr
    assert "error: Model 'RN50' (open_clip RN50-quickgelu with the openai weights) cannot be" in err
    assert str(hf_home / "hub") in err
    assert "-b local-dir:PATH" in err and "--pretrained FILE" in err and "HF_HOME" in err
    if network == "offline":
        assert "offline mode is on (HF_HUB_OFFLINE is set)" in err
    else:
        assert f"http://127.0.0.1:{port} cannot be reached" in err
    assert "Traceback" not in err
    assert "retry" not in (err + proc.stdout).lower()
    assert "b.load(" not in err
    # one error message, one paragraph (other lines are the CLI's own notes)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].endswith("mean nothing."), err
    assert err.count("RN50-quickgelu") == errors[0].count("RN50-quickgelu")


def test_no_backbone_given_never_downloads_and_lists_the_local_ones(
    tmp_path: Path, shapes: Path
) -> None:
    hf_home = tmp_path / "hf-home"
    env = {"HF_HOME": str(hf_home), "HF_HUB_CACHE": str(hf_home / "hub")}
    env.update(dict.fromkeys(_PROXY_VARS, ""))
    env["HF_ENDPOINT"] = f"http://127.0.0.1:{closed_port()}"
    start = time.perf_counter()
    proc = run_fewclip(
        "fit", "-m", "zero-shot", "-d", shapes, "-o", tmp_path / "ad",
        store=tmp_path / "store", env=env, timeout=120, offline=False,
    )  # fmt: skip
    wall = time.perf_counter() - start
    assert proc.returncode == 2, proc.stderr
    assert wall < 5.0, f"took {wall:.1f} s"  # the whole process: no model is loaded
    err = proc.stderr
    assert "no backbone given" in err and "No real CLIP weights are on this machine" in err
    assert "-b fewclip-tiny-vit" in err and "-b local-dir:PATH" in err
    assert "Traceback" not in err and not (tmp_path / "ad").exists()
