"""The README's "Your own images, step by step" lines, run as written on a folder of JPEGs."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from fewclip.testing.images import draw_shape_image, write_bad_images

README = Path(__file__).resolve().parents[2] / "README.md"


def _walkthrough() -> list[str]:
    text = README.read_text()
    block = re.search(r"<!-- own-images:start.*?```bash\n(.*?)```", text, re.S)
    assert block, "README: the own-images walk-through block is missing"
    lines = [ln.strip() for ln in block.group(1).splitlines() if ln.strip()]
    assert lines
    assert all(ln.startswith("fewclip ") for ln in lines)
    return lines


def _jpegs(folder: Path, classes: dict[str, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    for name, n in classes.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            draw_shape_image(name, rng, 40).save(folder / name / f"IMG_{i:04d}.jpg", quality=90)


def test_readme_own_images_walkthrough_runs_as_written(tmp_path: Path) -> None:
    _jpegs(tmp_path / "my_photos", {"red_circle": 14, "blue_square": 9, "green_star": 20}, 0)
    write_bad_images(tmp_path / "my_photos" / "blue_square", ["truncated.png"])
    _jpegs(tmp_path / "new_photos", {"red_circle": 1, "green_star": 1}, 1)
    for p in (tmp_path / "new_photos").rglob("*.jpg"):
        p.rename(tmp_path / "new_photos" / f"{p.parent.name}.jpg")
    env = dict(os.environ)
    env.update(
        PATH=str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
        FEWCLIP_STORE=str(tmp_path / "store"),
        HF_HUB_OFFLINE="1",
    )
    for line in _walkthrough():
        res = subprocess.run(
            line, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        assert res.returncode == 0, f"{line}\n{res.stderr}"
        assert "Traceback" not in res.stderr, res.stderr
    rows = list(csv.DictReader((tmp_path / "predictions.csv").open()))
    assert {Path(r["image"]).name for r in rows} == {"red_circle.jpg", "green_star.jpg"}
    assert (tmp_path / "my-adapter" / "adapter.json").is_file()
    assert '"method": "tip-adapter-f"' in (tmp_path / "my-adapter" / "config.json").read_text()
