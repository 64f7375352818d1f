"""MkDocs hooks: pages and figures generated from fewclip itself at build time.

- ``<!-- cli-reference -->`` in a page becomes the reference of every ``fewclip`` command
  (``fewclip.cli.reference.markdown``), so the CLI page cannot drift from the commands.
- Before the build, the demo (``fewclip demo --fast``, offline, toy backbone) and a per-class
  evaluation of an adapter fitted on the demo's images write their figures into
  ``docs/assets/generated/`` (not in git). The demo folder is kept in ``.fewclip-cache/`` and
  reused by later builds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ROOT / "docs" / "assets" / "generated"
DEMO = ROOT / ".fewclip-cache" / "docs-demo"
FIGURES = ("accuracy_vs_shots.svg", "per_class.svg", "world_accuracy_vs_shots.svg")


def _fewclip(*args: str) -> None:
    exe = Path(sys.executable).with_name("fewclip")
    cmd = [str(exe) if exe.exists() else "fewclip", *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)


def on_pre_build(config: Any) -> None:
    GENERATED.mkdir(parents=True, exist_ok=True)
    if all((GENERATED / f).is_file() for f in FIGURES):
        return
    _fewclip("demo", "--fast", "--out", str(DEMO), "-q")
    adapter = DEMO / "docs-adapter"
    if not (adapter / "adapter.json").is_file():
        _fewclip(
            "fit", "-m", "tip-adapter", "-d", str(DEMO / "data"), "-k", "8",
            "-b", f"local-dir:{DEMO / 'tiny-backbone-warmup40'}",
            "--store", str(DEMO / "store"), "-o", str(adapter), "-q",
        )  # fmt: skip
    _fewclip(
        "evaluate", str(adapter), "--split", "test", "--store", str(DEMO / "store"),
        "--per-class", "--plot", str(GENERATED / "per_class.svg"), "-q",
    )  # fmt: skip
    shutil.copyfile(DEMO / "accuracy_vs_shots.svg", GENERATED / "accuracy_vs_shots.svg")
    shutil.copyfile(
        DEMO / "world-dtd" / "accuracy_vs_shots.svg", GENERATED / "world_accuracy_vs_shots.svg"
    )


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if "<!-- cli-reference -->" in markdown:
        from fewclip.cli.reference import markdown as cli_markdown

        markdown = markdown.replace("<!-- cli-reference -->", cli_markdown())
    return markdown
