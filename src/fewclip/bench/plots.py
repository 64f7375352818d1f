"""Accuracy-vs-shots figures in the papers' style (needs the ``plot`` extra: matplotlib).

``plot_summary(summary, out_stem)`` draws, for each (backbone, protocol) group, one panel per
dataset plus the average panel: one line per method over a log₂ shots axis (ticks 1, 2, 4, 8,
16), a band of ± one std over seeds, the zero-shot method as a dashed horizontal line (its
accuracy does not depend on K), LEAKY results as hollow markers with "LEAKY" in the legend
and the title, and "(TOY backbone)" with the TOY warning in the title of a toy backbone's figure
(``Group.toy``). Each figure is written as PNG and SVG, atomically.

``plot_per_class(rows, path)`` draws the per-class accuracy of one evaluation as horizontal
bars, worst class at the top (what ``fewclip evaluate --per-class --plot FILE`` writes).
"""

from __future__ import annotations

import io
import math
import os
import re
from pathlib import Path
from typing import Any

from fewclip.bench.results import TOY_WARNING, Group, Stat, Summary, Table, write_atomic
from fewclip.errors import InvalidValueError, MissingExtraError

__all__ = ["PLOT_EXTRA_HINT", "plot_group", "plot_per_class", "plot_summary"]

PLOT_EXTRA_HINT = "plots need matplotlib: pip install 'fewclip[plot]'"

_ZERO_SHOT = "zero-shot"


def _require_matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise MissingExtraError(PLOT_EXTRA_HINT) from None
    return matplotlib


def _panels(group: Group) -> list[tuple[str, Table]]:
    out = [(name, t) for name, t in group.tables.items()]
    if group.average is not None and group.average.datasets and len(group.tables) > 1:
        out.append((f"average ({len(group.average.datasets)} datasets)", group.average))
    return out


def _zero_shot(per: dict[int, Stat]) -> tuple[float, float | None, bool]:
    """Zero-shot does not depend on K: the mean over its cells (and the largest std)."""
    stats = list(per.values())
    mean = sum(s.mean for s in stats) / len(stats)
    stds = [s.std for s in stats if s.std is not None]
    return mean, (max(stds) if stds else None), any(s.leaky for s in stats)


def plot_group(group: Group, *, methods: list[str] | None = None, ncols: int | None = None) -> Any:
    """A ``matplotlib.figure.Figure`` for one group (one panel per dataset + average)."""
    _require_matplotlib()
    from matplotlib import colormaps
    from matplotlib.colors import to_hex
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    panels = _panels(group)
    if not panels:
        raise InvalidValueError(f"group {group.backbone}/{group.protocol}: no tables to plot")
    n = len(panels)
    ncols = ncols or min(4, n)
    nrows = math.ceil(n / ncols)
    width = max(3.6 * ncols, 7.0)  # room for the title and a legend of many methods
    fig = Figure(figsize=(width, 3.0 * nrows + 0.9), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    order: list[str] = list(methods or [])
    for _, t in panels:
        order += [m for m in t.methods if m not in order]
    colour: dict[str, str] = {}
    n_cycled = sum(1 for m in order if m.split(" #")[0] != _ZERO_SHOT)
    # up to 10 methods: matplotlib's default cycle; more: the 20 colours of tab20, so that no
    # two methods of the 15 registered ones share a colour
    palette = (
        [f"C{i}" for i in range(10)]
        if n_cycled <= 10
        else [to_hex(c) for c in colormaps["tab20"].colors]  # type: ignore[attr-defined]
    )
    cycle = 0
    for m in order:  # the zero-shot baseline is dark grey and dashed; the others cycle
        if m.split(" #")[0] == _ZERO_SHOT:
            colour[m] = "0.15"
        else:
            colour[m], cycle = palette[cycle % len(palette)], cycle + 1
    markers = "osD^vP*Xh<>p"
    marker = {m: markers[i % len(markers)] for i, m in enumerate(order)}
    leaky_any = False
    for i, (name, t) in enumerate(panels):
        ax = axes[i // ncols][i % ncols]
        shots = t.shots
        for m in t.methods:
            per = t.cells.get(m, {})
            if not per:
                continue
            if m.split(" #")[0] == _ZERO_SHOT:
                mean, std, leaky = _zero_shot(per)
                ax.axhline(mean, color=colour[m], linestyle="--", linewidth=1.4)
                if std:
                    ax.axhspan(mean - std, mean + std, color=colour[m], alpha=0.08, linewidth=0)
                leaky_any |= leaky
                continue
            ks = [k for k in shots if k in per]
            ys = [per[k].mean for k in ks]
            sd = [per[k].std or 0.0 for k in ks]
            leaky = any(per[k].leaky for k in ks)
            leaky_any |= leaky
            ax.plot(
                ks,
                ys,
                color=colour[m],
                marker=marker[m],
                markersize=5,
                linewidth=1.6,
                markerfacecolor="none" if leaky else colour[m],
            )
            if any(sd):
                ax.fill_between(
                    ks,
                    [y - s for y, s in zip(ys, sd, strict=True)],
                    [y + s for y, s in zip(ys, sd, strict=True)],
                    color=colour[m],
                    alpha=0.15,
                    linewidth=0,
                )
        ax.set_xscale("log", base=2)
        if shots:
            ax.set_xticks(shots)
            ax.set_xticklabels([str(k) for k in shots])
            ax.minorticks_off()
            lo, hi = min(shots), max(shots)
            ax.set_xlim(lo / 2**0.25, hi * 2**0.25)
        ax.set_title(name + (" (LEAKY)" if t.leaky else ""), fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=8)
        if i % ncols == 0:
            ax.set_ylabel("top-1 accuracy (%)", fontsize=9)
        if i // ncols == nrows - 1 or i + ncols >= n:
            ax.set_xlabel("shots per class", fontsize=9)
    for j in range(n, nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    handles = []
    for m in order:
        if m.split(" #")[0] == _ZERO_SHOT:
            handles.append(Line2D([], [], color=colour[m], linestyle="--", label=m))
        else:
            handles.append(Line2D([], [], color=colour[m], marker=marker[m], label=m))
    if leaky_any:
        handles.append(
            Line2D(
                [],
                [],
                color="0.3",
                marker="o",
                markerfacecolor="none",
                linestyle="none",
                label="hollow = LEAKY (oracle-test)",
            )
        )
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncol=max(1, min(len(handles), int(width / 1.5))),
        fontsize=8,
        frameon=False,
    )
    title = (
        group.backbone
        + (" (TOY backbone)" if group.toy else "")
        + f" — protocol {group.protocol}"
        + (" — LEAKY" if leaky_any else "")
        + "  (mean ± std over seeds)"
    )
    if group.toy:
        title += f"\nTOY: {TOY_WARNING}"
    fig.suptitle(title, fontsize=11)
    return fig


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "group"


def plot_summary(
    summary: Summary,
    out_stem: str | os.PathLike[str],
    *,
    methods: list[str] | None = None,
    formats: tuple[str, ...] = ("png", "svg"),
    dpi: int = 150,
) -> list[Path]:
    """Write ``{out_stem}.png`` and ``.svg`` (one group) or ``{out_stem}-{backbone}-{protocol}``
    files (several groups), each atomically; returns the paths written.

    Raises ``ImportError`` with the install hint when matplotlib is missing.
    """
    _require_matplotlib()
    stem = Path(out_stem)
    paths: list[Path] = []
    many = len(summary.groups) > 1
    for g in summary.groups:
        fig = plot_group(g, methods=methods)
        base = (
            stem.with_name(f"{stem.name}-{_slug(g.backbone)}-{_slug(g.protocol)}") if many else stem
        )
        for fmt in formats:
            buf = io.BytesIO()
            fig.savefig(buf, format=fmt, dpi=dpi)
            paths.append(write_atomic(base.with_name(f"{base.name}.{fmt}"), buf.getvalue()))
    return paths


def plot_per_class(
    rows: list[dict[str, Any]],
    path: str | os.PathLike[str],
    *,
    title: str = "Per-class accuracy",
    dpi: int = 150,
) -> Path:
    """Write a bar chart of per-class accuracy to ``path`` (format from its suffix: ``.png``,
    ``.svg``, ``.pdf``), atomically.

    ``rows`` are ``{"class": name, "accuracy": percent or None, "n": images}`` as
    ``fewclip.metrics`` reports them; classes without test images are left out. The worst
    class is drawn at the top; a dashed line marks the mean over classes (macro accuracy).
    """
    _require_matplotlib()
    from matplotlib.figure import Figure

    target = Path(path)
    fmt = target.suffix.lstrip(".").lower()
    if fmt not in ("png", "svg", "pdf"):
        raise InvalidValueError(
            f"--plot: expected a .png, .svg or .pdf file name, found {target.name!r}"
        )
    shown = sorted((r for r in rows if r.get("accuracy") is not None), key=lambda r: r["accuracy"])
    if not shown:
        raise InvalidValueError("per-class accuracy: no class has an image to score")
    names = [f"{r['class']} ({r['n']})" for r in shown]
    values = [float(r["accuracy"]) for r in shown]
    fig = Figure(figsize=(6.4, 0.9 + 0.28 * len(shown)), layout="constrained")
    ax = fig.subplots()
    ax.barh(range(len(values)), values, color="#4c72b0")
    ax.set_yticks(range(len(values)), names, fontsize=8)
    ax.invert_yaxis()
    macro = sum(values) / len(values)
    ax.axvline(macro, color="0.3", linestyle="--", linewidth=1, label=f"mean {macro:.1f}%")
    ax.set_xlim(0, 100)
    ax.set_xlabel("top-1 accuracy (%), class (test images)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=dpi)
    return write_atomic(target, buf.getvalue())
