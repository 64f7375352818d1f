"""Accuracy-vs-shots figures: files written, LEAKY marked, clear error without matplotlib."""

from __future__ import annotations

import sys

import pytest

from fewclip.bench import summarize

from .test_results import row


def _rows(leaky=False):
    out = []
    for ds in ("dtd", "eurosat"):
        for seed in (1, 2):
            for k in (1, 2, 4, 8, 16):
                out.append(row("zero-shot", ds, k, seed, 40.0 + seed, leaky=leaky))
                out.append(row("tip-adapter", ds, k, seed, 45.0 + k + seed, leaky=leaky))
                out.append(row("tip-adapter-f", ds, k, seed, 46.0 + 1.2 * k, leaky=leaky))
    return out


def test_png_and_svg_are_written(tmp_path):
    pytest.importorskip("matplotlib")
    from fewclip.bench.plots import plot_summary

    paths = plot_summary(summarize(_rows()), tmp_path / "acc")
    assert [p.name for p in paths] == ["acc.png", "acc.svg"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in paths[1].read_bytes()[:2000]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acc.png", "acc.svg"]


def test_leaky_groups_get_their_own_marked_figure(tmp_path):
    pytest.importorskip("matplotlib")
    from fewclip.bench.plots import plot_group, plot_summary

    s = summarize(_rows() + _rows(leaky=True))
    paths = plot_summary(s, tmp_path / "acc", formats=("svg",))
    assert [p.name for p in paths] == ["acc-RN50-fewshot-val.svg", "acc-RN50-oracle-test.svg"]
    fig = plot_group(s.groups[1])
    assert "LEAKY" in fig._suptitle.get_text()
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "hollow = LEAKY (oracle-test)" in labels
    ax = fig.axes[0]
    assert [round(t) for t in ax.get_xticks()] == [1, 2, 4, 8, 16]
    assert ax.get_xscale() == "log"


def test_missing_matplotlib_names_the_extra(monkeypatch, tmp_path):
    from fewclip.bench import plots

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install 'fewclip\[plot\]'"):
        plots.plot_summary(summarize(_rows()), tmp_path / "x")


@pytest.mark.parametrize("n_methods", [4, 15])
def test_every_method_gets_its_own_colour(n_methods):
    pytest.importorskip("matplotlib")
    from matplotlib.colors import to_hex

    from fewclip import methods as registry
    from fewclip.bench.plots import plot_group

    names = [m for m in registry.available() if m != "zero-shot"][: n_methods - 1]
    rows = [row("zero-shot", "dtd", k, 1, 40.0) for k in (1, 2)]
    rows += [row(m, "dtd", k, 1, 41.0 + i + k) for i, m in enumerate(names) for k in (1, 2)]
    fig = plot_group(summarize(rows).groups[0])
    legend = fig.legends[0]
    colour = {
        t.get_text(): to_hex(h.get_color())
        for t, h in zip(legend.get_texts(), legend.legend_handles, strict=True)
    }
    assert set(names) <= set(colour)
    assert len({colour[m] for m in names}) == len(names)
    drawn = {to_hex(ln.get_color()) for ln in fig.axes[0].get_lines()}
    assert {colour[m] for m in names} <= drawn
