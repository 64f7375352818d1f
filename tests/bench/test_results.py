"""Aggregation into mean ± std tables, against hand-computed numbers."""

from __future__ import annotations

import json
import statistics

import pytest

from fewclip.bench import format_tables, read_rows, summarize, summary_json, write_reports
from fewclip.bench.results import row_checksum


def row(method, dataset, shots, seed, acc, *, leaky=False, params=None, backbone="RN50"):
    cell = {
        "method": method,
        "dataset": dataset,
        "shots": shots,
        "seed": seed,
        "params": params or {},
        "views": None,
        "prompts": "default",
        "protocol_options": {},
    }
    return {
        "hash": json.dumps(cell, sort_keys=True) + backbone + str(leaky),
        "cell": cell,
        "method": method,
        "dataset": dataset,
        "backbone": backbone,
        "shots": shots,
        "seed": seed,
        "protocol": "oracle-test" if leaky else "fewshot-val",
        "leaky": leaky,
        "mark": "LEAKY" if leaky else "",
        "accuracy": acc,
    }


@pytest.fixture
def rows():
    out = []
    # dtd: tip 50/60/70 at 1-shot, 62/64/66 at 2-shot; zero-shot 40 everywhere
    for seed, a1, a2 in [(1, 50.0, 62.0), (2, 60.0, 64.0), (3, 70.0, 66.0)]:
        out += [row("tip-adapter", "dtd", 1, seed, a1), row("tip-adapter", "dtd", 2, seed, a2)]
        out += [row("zero-shot", "dtd", k, seed, 40.0) for k in (1, 2)]
    # eurosat: tip 80/90 (seeds 1, 2), zero-shot 30
    for seed, a in [(1, 80.0), (2, 90.0)]:
        out += [row("tip-adapter", "eurosat", k, seed, a + k) for k in (1, 2)]
        out += [row("zero-shot", "eurosat", k, seed, 30.0) for k in (1, 2)]
    # pets: zero-shot only → left out of the average
    out += [row("zero-shot", "pets", k, 1, 85.0) for k in (1, 2)]
    return out


def test_mean_and_sample_std_per_dataset(rows):
    s = summarize(rows, methods=["zero-shot", "tip-adapter"])
    (g,) = s.groups
    dtd = g.tables["dtd"]
    assert dtd.methods == ["zero-shot", "tip-adapter"]
    assert dtd.shots == [1, 2]
    c = dtd.cells["tip-adapter"][1]
    assert c.mean == pytest.approx(60.0)
    assert c.std == pytest.approx(10.0)
    assert c.n == 3
    assert c.seeds == (1, 2, 3)
    assert dtd.cells["tip-adapter"][2].std == pytest.approx(2.0)
    assert dtd.cells["zero-shot"][1].std == pytest.approx(0.0)
    eu = g.tables["eurosat"].cells["tip-adapter"][2]
    assert eu.mean == pytest.approx(87.0)
    assert eu.std == pytest.approx(statistics.stdev([82, 92]))
    assert g.tables["pets"].cells["zero-shot"][1].std is None  # one seed


def test_average_only_over_datasets_present_for_all_methods(rows):
    g = summarize(rows, methods=["zero-shot", "tip-adapter"]).groups[0]
    avg = g.average
    assert avg is not None
    assert avg.datasets == ["dtd", "eurosat"]
    assert avg.excluded == ["pets"]
    assert avg.cells["tip-adapter"][1].mean == pytest.approx((60.0 + 86.0) / 2)
    assert avg.cells["zero-shot"][2].mean == pytest.approx(35.0)
    # seeds differ between datasets (dtd 1-3, eurosat 1-2): no std for the average
    assert avg.cells["tip-adapter"][1].std is None
    text = format_tables(summarize(rows, methods=["zero-shot", "tip-adapter"]))
    assert "Mean over datasets: dtd, eurosat." in text
    assert "Left out (missing some method or shot count): pets." in text


def test_average_std_over_seeds_when_seeds_line_up(rows):
    rows = [r for r in rows if r["seed"] in (1, 2) and r["dataset"] != "pets"]
    avg = summarize(rows).groups[0].average
    assert avg is not None
    # per-seed dataset averages at 1-shot: seed 1 (50+81)/2, seed 2 (60+91)/2
    assert avg.cells["tip-adapter"][1].std == pytest.approx(statistics.stdev([65.5, 75.5]))


def test_text_and_markdown_rendering(rows):
    s = summarize(rows, methods=["zero-shot", "tip-adapter"])
    text = format_tables(s, "text")
    assert "60.00 ± 10.00" in text
    assert "85.00" in text
    assert "|" not in text
    lines = text.splitlines()
    header = next(i for i, ln in enumerate(lines) if ln.startswith("method"))
    assert lines[header + 2].startswith("zero-shot")
    assert lines[header + 3].startswith("tip-adapter")
    md = format_tables(s, "markdown")
    assert "| method | 1-shot | 2-shot |" in md
    assert "| tip-adapter | 60.00 ± 10.00 | 64.00 ± 2.00 |" in md
    assert "### average over 2 dataset(s) — RN50 — fewshot-val" in md
    assert format_tables(s, "text", digits=1).count("60.0 ± 10.0") == 1
    with pytest.raises(ValueError, match="fmt"):
        format_tables(s, "html")


def test_default_order_is_the_registry_order(rows):
    t = summarize(rows).groups[0].tables["dtd"]
    assert t.methods == ["tip-adapter", "zero-shot"]  # registry: alphabetical


def test_leaky_cells_and_groups_are_marked(rows):
    leaky = [row("tip-adapter", "imagenet", k, 1, 60.0 + k, leaky=True) for k in (1, 2)]
    s = summarize(rows + leaky)
    assert [g.protocol for g in s.groups] == ["fewshot-val", "oracle-test"]
    assert s.groups[1].leaky
    assert not s.groups[0].leaky
    text = format_tables(s)
    assert "61.00 †" in text
    assert "protocol oracle-test — LEAKY" in text
    assert "† LEAKY:" in text
    js = summary_json(s)
    assert js["groups"][1]["leaky"] is True
    assert js["groups"][1]["datasets"]["imagenet"]["cells"]["tip-adapter"]["1"]["leaky"] is True


def test_duplicates_are_counted_once_and_variants_kept_apart(rows):
    s = summarize(rows + rows[:3])
    assert s.duplicates == 3
    assert s.n_rows == len(rows)
    variant = [row("tip-adapter", "dtd", 1, 1, 10.0, params={"alpha": 2})]
    t = summarize(rows + variant).groups[0].tables["dtd"]
    assert t.methods == ["tip-adapter #1", "tip-adapter #2", "zero-shot"]
    assert t.cells["tip-adapter #2"][1].mean == 10.0


def test_json_summary_and_reports(tmp_path, rows):
    s = summarize(rows, methods=["zero-shot", "tip-adapter"])
    js = summary_json(s)
    dtd = js["groups"][0]["datasets"]["dtd"]["cells"]["tip-adapter"]["1"]
    assert dtd == {"mean": 60.0, "std": 10.0, "n": 3, "seeds": [1, 2, 3], "leaky": False}
    assert js["groups"][0]["average"]["excluded"] == ["pets"]
    paths = write_reports(s, tmp_path, stem="res")
    assert [p.name for p in paths] == ["res.md", "res.txt", "res.summary.json"]
    assert json.loads(paths[2].read_text()) == js
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_read_rows_skips_blank_and_counts_bad_lines(tmp_path):
    p = tmp_path / "r.jsonl"
    signed = {"a": 3, "checksum": row_checksum({"a": 3})}
    forged = {"a": 4, "checksum": row_checksum({"a": 5})}
    lines = [
        '{"a": 1}',
        "",
        "not json",
        "[1, 2]",
        '{"a": 2}',
        json.dumps(signed),
        json.dumps(forged),
    ]
    p.write_text("\n".join(lines) + "\n")
    match = (
        r"skipped 3 damaged line\(s\) \(lines 3 \(not JSON\), 4 \(not a JSON object\), 7 \(checksum"
    )
    with pytest.warns(RuntimeWarning, match=match):
        assert read_rows(p) == [{"a": 1}, {"a": 2}, signed]
    with pytest.raises(FileNotFoundError, match="no such results file"):
        read_rows(tmp_path / "missing.jsonl")
