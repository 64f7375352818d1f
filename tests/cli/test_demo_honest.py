"""`fewclip demo` names the backbone that produced its numbers and marks it TOY everywhere.

One demo run (module fixture, the installed console script) is checked in every output: the
terminal, results.md, every JSONL row and the plot title; then one ``-q`` and one ``--json``
run on the same folder (they resume: every cell is already done). Its feature-level part, on
the calibrated DTD world, says what it is and is never marked TOY.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from .conftest import run_fewclip

LABEL = "fewclip-tiny-vit+toy40"
WARNING = "never saw a real image; these numbers say nothing about CLIP"
ARGS = ["demo", "--fast", "--views", "2"]  # the default toy backbone; 2 views keep it fast
WORLD = "world-dtd"
TABLE_HEADER = re.compile(r"^method +1-shot +4-shot +16-shot$", re.MULTILINE)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    tmp = tmp_path_factory.mktemp("demo")
    out = tmp / "out"
    res = run_fewclip(*ARGS, "--out", out, store=tmp / "store")
    assert res.returncode == 0, res.stderr
    return out, res


def _checkpoint(out: Path) -> Path:
    return out / "tiny-backbone-warmup40"


def test_the_table_is_printed_once(demo: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    _, res = demo
    # one table for the images, one for the feature-level part
    assert len(TABLE_HEADER.findall(res.stdout)) == 2, res.stdout
    assert res.stdout.count(f"shapes — {LABEL} — fewshot-val") == 1
    assert "average over" not in res.stdout  # one dataset: its average would repeat it


def test_terminal_names_the_toy_backbone_and_its_checkpoint(
    demo: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    out, res = demo
    first = res.stdout.splitlines()[0]
    assert first.startswith(f"TOY BACKBONE: {LABEL} (")
    assert WARNING in first
    assert f"== {LABEL} — protocol fewshot-val — TOY ==" in res.stdout
    assert "fewclip-tiny-vit —" not in res.stdout  # the bare (random) name labels nothing
    ckpt = _checkpoint(out)
    assert (ckpt / "open_clip_model.safetensors").is_file()
    assert (ckpt / "TOY_BACKBONE.txt").is_file()
    assert f"Its checkpoint is saved in {ckpt}" in res.stdout
    assert f"-b local-dir:{ckpt}" in res.stdout
    assert "TINY TOY backbone" in res.stdout


def test_results_md_starts_with_the_toy_line(
    demo: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    out, _ = demo
    md = (out / "results.md").read_text()
    first = md.splitlines()[0]
    assert first.startswith(f"**TOY BACKBONE: {LABEL} (")
    assert first.endswith("**")
    assert WARNING in first
    assert str(_checkpoint(out).resolve()) in first
    assert f"## {LABEL} — protocol fewshot-val — TOY" in md
    assert "fewclip-tiny-vit —" not in md
    assert (out / "results.txt").read_text().startswith(f"TOY BACKBONE: {LABEL}")


def test_every_jsonl_row_names_the_toy_backbone(
    demo: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    out, _ = demo
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 4 * 3
    for r in rows:
        assert r["backbone"] == LABEL
        assert r["cell"]["backbone"] == LABEL
        assert r["toy"] is True
        assert str(_checkpoint(out).resolve()) in r["backbone_note"]
    summary = json.loads((out / "results.summary.json").read_text())
    assert [(g["backbone"], g["toy"]) for g in summary["groups"]] == [(LABEL, True)]


def test_the_plot_title_says_toy(demo: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    pytest.importorskip("matplotlib")
    from fewclip.bench import read_rows, summarize
    from fewclip.bench.plots import plot_group

    out, _ = demo
    svg = (out / "accuracy_vs_shots.svg").read_text()
    # matplotlib draws text as paths and keeps each string in a comment
    assert f"<!-- {LABEL} (TOY backbone) — protocol fewshot-val" in svg
    assert WARNING in svg
    fig = plot_group(summarize(read_rows(out / "results.jsonl")).groups[0])
    title = fig._suptitle.get_text()
    assert title.startswith(f"{LABEL} (TOY backbone)")
    assert WARNING in title


def test_quiet_prints_only_the_table(
    demo: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    out, _ = demo
    res = run_fewclip(*ARGS, "--out", out, "-q", store=tmp_path / "store")
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    assert len(TABLE_HEADER.findall(res.stdout)) == 2, res.stdout
    assert res.stdout.startswith(f"TOY BACKBONE: {LABEL} (")
    assert WARNING in res.stdout
    assert "wrote" not in res.stdout.lower()
    assert "These numbers" not in res.stdout
    assert "Feature level: synthetic features calibrated to CLIP RN50 on dtd" in res.stdout
    assert "Published on the real" not in res.stdout
    assert len((out / "results.jsonl").read_text().splitlines()) == 4 * 3  # resumed, no rerun
    assert len((out / WORLD / "results.jsonl").read_text().splitlines()) == 4 * 3


def test_json_prints_only_json(
    demo: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    out, _ = demo
    res = run_fewclip(*ARGS, "--out", out, "--json", store=tmp_path / "store")
    assert res.returncode == 0, res.stderr
    payload = json.loads(res.stdout)
    (group,) = payload["groups"]
    assert group["backbone"] == LABEL
    assert group["toy"] is True
    assert payload["world"]["name"] == "dtd"
    (world,) = payload["world"]["groups"]
    assert world["backbone"] == "synthetic-RN50"
    assert world["toy"] is False


def test_the_feature_level_part_says_what_it_is(
    demo: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    out, res = demo
    text = res.stdout[res.stdout.index("Feature level:") :]
    assert text.startswith(
        "Feature level: synthetic features calibrated to CLIP RN50 on dtd (47 classes, "
        "D = 1024): its zero-shot (42.2%) and 16-shot Tip-Adapter (60.9%) accuracies are the "
        "published ones; no images and no backbone."
    )
    assert "== synthetic-RN50 — protocol fewshot-val ==" in text
    assert "TOY" not in text
    assert "Published on the real dtd images (CLIP RN50" in text
    assert "| tip-adapter | 46.22 | 53.96 | 60.93 |" in text
    assert f"Wrote {(out / WORLD).resolve()}." in text
    assert "on the calibrated dtd world (protocol fewshot-val)" in res.stderr
    rows = [json.loads(x) for x in (out / WORLD / "results.jsonl").read_text().splitlines()]
    assert sorted({(r["method"], r["shots"]) for r in rows}) == sorted(
        (m, k)
        for m in ("zero-shot", "linear-probe", "tip-adapter", "tip-adapter-f")
        for k in (1, 4, 16)
    )
    for r in rows:
        assert r["backbone"] == "synthetic-RN50"
        assert r["toy"] is False
        assert r["dataset"] == "dtd"
        assert r["protocol"] == "fewshot-val"
        assert "calibrated to CLIP RN50 on dtd" in r["backbone_note"]
    acc = {(r["method"], r["shots"]): r["accuracy"] for r in rows}
    # on this world, as on real features, few-shot data helps: the methods learn something
    assert acc[("tip-adapter-f", 16)] > acc[("zero-shot", 16)] + 10
    assert acc[("linear-probe", 16)] > acc[("zero-shot", 16)]
    assert acc[("linear-probe", 1)] < acc[("zero-shot", 1)]
    assert "| tip-adapter | 46.22 | 53.96 | 60.93 |" in (out / WORLD / "published.md").read_text()
    assert (out / WORLD / "results.md").read_text().count("tip-adapter-f") == 1


def test_labels_of_random_real_and_reused_backbones(tmp_path: Path) -> None:
    """In-process: what ``_demo_backbone`` calls each backbone, and which it marks TOY."""
    import fewclip.backbones as fb
    from fewclip.bench import format_tables, summarize
    from fewclip.cli.run_cmds import DEMO_TOY_MARKER, _demo_backbone

    bb, note, ckpt = _demo_backbone("fewclip-tiny-vit", None, tmp_path, 0, True)
    assert bb.name == "fewclip-tiny-vit+random"
    assert note is not None
    assert "untrained" in note
    assert ckpt is None
    # a checkpoint without the demo's marker stands for real weights: nothing is TOY
    folder = tmp_path / "ckpt"
    fb.load("fewclip-tiny-vit").save_pretrained(folder)
    bb, note, ckpt = _demo_backbone(f"local-dir:{folder}", None, tmp_path, 40, True)
    assert bb.name == f"local-dir:{folder}"
    assert note is None
    assert ckpt is None
    row = {"method": "zero-shot", "dataset": "d", "backbone": bb.name, "protocol": "p"}
    rows = [{**row, "shots": k, "seed": 1, "accuracy": 50.0, "toy": False} for k in (1, 2)]
    assert "TOY" not in format_tables(summarize(rows), "markdown")
    # the demo's own checkpoint, reused with -b local-dir:, stays TOY
    (folder / DEMO_TOY_MARKER).write_text("fewclip-tiny-vit random init + 40 steps\n")
    _, note, _ = _demo_backbone(f"local-dir:{folder}", None, tmp_path, 40, True)
    assert note is not None
    assert note.startswith("fewclip-tiny-vit random init + 40 steps")
