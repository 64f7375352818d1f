"""The feature-level part of `fewclip demo`: the same methods on a calibrated synthetic world.

The image part runs a toy backbone on generated shapes, so its numbers say nothing about how the
methods behave on CLIP features. This part runs the methods on
``SyntheticWorld.from_preset(name)``: a feature world whose zero-shot and 16-shot Tip-Adapter
accuracies are CLIP RN50's published ones on that dataset (``fewclip.testing.calibration``), with
the dataset's class count and split sizes. There are no images and no backbone: features are
generated. Its table is printed beside the published numbers of real RN50 features.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer

from fewclip.cli._common import atomic_write_text, echo

#: The backbone label of the world's rows: no backbone ran, the features are generated.
WORLD_LABEL = "synthetic-RN50"

#: Settings of the feature-level part on top of the demo's short schedules (unless
#: --paper-schedules): ProKeR's kernel over one row per image instead of one per view (the
#: reference with ``--augment-epoch 1``), 10x fewer rows; over every view its 10 x 10 search
#: on DTD at 16 shots (7,520 rows) alone takes minutes.
WORLD_PARAMS: dict[str, dict[str, Any]] = {"proker": {"rows": "features"}}


def world_names() -> list[str]:
    """The calibrated presets a demo can use (the 11 benchmarks)."""
    from fewclip.testing.synthetic import CALIBRATED

    return sorted(CALIBRATED)


def check_world(name: str) -> str | None:
    """``--world`` read: a calibrated preset name, or ``None`` for ``none``; a usage error
    (exit 2) otherwise."""
    if name.lower() == "none":
        return None
    known = world_names()
    if name not in known:
        raise typer.BadParameter(
            f"no calibrated world {name!r}; use one of {', '.join(known)}, or none",
            param_hint="--world",
        )
    return name


def describe(name: str) -> str:
    """One line saying what the world is and which two published numbers it was fitted on."""
    from fewclip.testing.calibration import TARGETS
    from fewclip.testing.synthetic import PRESETS

    zero_shot, tip16 = TARGETS[name]
    shape = PRESETS[name]
    return (
        f"synthetic features calibrated to CLIP RN50 on {name} ({shape.classes} classes, "
        f"D = {shape.dim}): its zero-shot ({zero_shot:.1f}%) and 16-shot Tip-Adapter "
        f"({tip16:.1f}%) accuracies are the published ones; no images and no backbone"
    )


def published_table(name: str, methods: Sequence[str], shots: Sequence[int]) -> str | None:
    """The published RN50 accuracies on the real dataset for the methods and shots that have
    one (Tip-Adapter's paper and exp.log), as a markdown table; ``None`` if none has one."""
    from fewclip.testing.calibration import PUBLISHED, SHOTS

    paper = PUBLISHED[name]
    rows = []
    for m in methods:
        if m not in paper:
            continue
        value = paper[m]
        if isinstance(value, float):
            curve = dict.fromkeys(SHOTS, value)
        else:
            curve = dict(zip(SHOTS, value, strict=True))
        cells = [f"{curve[k]:.2f}" if k in curve else "–" for k in shots]
        rows.append(f"| {m} | " + " | ".join(cells) + " |")
    if not rows:
        return None
    head = "| method | " + " | ".join(f"{k}-shot" for k in shots) + " |"
    rule = "|---|" + "---|" * len(shots)
    return "\n".join([head, rule, *rows])


def run_world(
    name: str,
    *,
    methods: Sequence[str],
    shots: Sequence[int],
    seed: int,
    views: int,
    params: dict[str, dict[str, Any]],
    out: Path,
    quiet: bool,
    printed: bool = True,
) -> Any:
    """Run ``methods`` × ``shots`` (draw ``seed``) on the calibrated world ``name`` with the
    leak-free ``fewshot-val`` protocol. Writes OUT/results.{jsonl,md,txt,summary.json},
    OUT/accuracy_vs_shots.{png,svg} (with matplotlib) and OUT/published.md; prints what the
    world is, its table and the published one (``quiet``: only what it is and its table;
    ``printed=False``: nothing). Resumes like every grid. ``None`` (and nothing run) when
    every method needs a text encoder."""
    from fewclip import methods as registry
    from fewclip.bench import BenchConfig, format_tables
    from fewclip.bench.runner import run_bench
    from fewclip.bench.synthetic import synthetic_prepare
    from fewclip.cli.run_cmds import _plot, _report

    feature_methods = [m for m in methods if not registry.get(m).needs_text_tower]
    left_out = [m for m in methods if m not in feature_methods]
    if not feature_methods:
        echo(
            f"\nfeature-level part skipped: every method asked for needs a text encoder "
            f"({', '.join(left_out)}), which a synthetic world does not have",
            quiet=quiet or not printed,
            err=True,
        )
        return None
    config = BenchConfig(
        methods=tuple(feature_methods),
        datasets=(name,),
        shots=tuple(shots),
        seeds=(seed,),
        backbones=(WORLD_LABEL,),
        protocol="fewshot-val",
        views=views,
        params={m: p for m, p in params.items() if m in feature_methods},
    )
    inner = synthetic_prepare(n_views=views)
    note = describe(name)

    def prepare(dataset: str, backbone: str) -> Any:
        return dataclasses.replace(inner(dataset, backbone), backbone_note=note)

    echo(
        f"\nfeature-level part: {len(feature_methods)} methods x shots {list(shots)} x seed "
        f"{seed} on the calibrated {name} world (protocol fewshot-val)"
        + (f"; left out (need a text encoder): {', '.join(left_out)}" if left_out else "")
        + (
            "; demo settings: "
            + ", ".join(f"{m} {k}={v}" for m, p in config.params.items() for k, v in p.items())
            if config.params
            else ""
        ),
        quiet=quiet or not printed,
        err=True,
    )
    rows = run_bench(config, prepare, out / "results.jsonl", quiet=quiet, progress=not quiet)
    summary = _report(rows, feature_methods, out, True)  # printed below, with what it is
    _plot(summary, out / "accuracy_vs_shots", quiet or not printed)
    published = published_table(name, feature_methods, shots)
    head = f"Published on the real {name} images (CLIP RN50; Tip-Adapter's paper and exp.log):"
    atomic_write_text(
        out / "published.md",
        f"{head}\n\n{published}\n" if published else f"{head} none for these methods.\n",
    )
    if not printed:
        return summary
    lines = [f"Feature level: {note}.", "", format_tables(summary, "text").rstrip("\n")]
    if not quiet:
        if published is not None:
            lines += ["", head, "", published]
        lines += [
            "",
            "Model selection on a few-shot validation set (the leak-free default); the "
            "published numbers used each dataset's full validation split. "
            f"Wrote {out.resolve()}.",
        ]
    echo("\n".join(lines))
    return summary
