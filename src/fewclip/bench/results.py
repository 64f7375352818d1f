"""Read benchmark rows and turn them into the papers' tables: mean ± std over seeds.

``summarize(rows)`` groups rows by (backbone, protocol) and, within a group, builds one table per
dataset (rows = methods, columns = shots) plus an average over datasets. The average only uses
datasets that have a result for every (method, shots) of the table, and says which were left out.
``format_tables(summary, "text" | "markdown")`` renders them; ``summary_json(summary)`` is the
machine-readable form. Cells with a LEAKY row (``oracle-test``) carry a ``†`` and a footnote.
Rows with ``toy: true`` (a toy backbone that never saw a real image, e.g. the demo's) make their
group TOY: its header says so and the rendered tables start with a TOY BACKBONE line.
A group with a single dataset shows no average table (it would repeat that dataset's).

Accuracies are top-1 in percent. ``std`` is the sample standard deviation (n − 1) over seeds;
``None`` for a single seed. The average's std is the std over seeds of the dataset-averaged
accuracy, when every included dataset has every seed; otherwise ``None``.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fewclip._io import atomic_write
from fewclip.errors import InvalidValueError, MissingFileError

__all__ = [
    "LEAKY_MARK",
    "TOY_WARNING",
    "Group",
    "Stat",
    "Summary",
    "Table",
    "format_table",
    "format_tables",
    "parse_row",
    "read_rows",
    "row_checksum",
    "summarize",
    "summary_json",
    "toy_warning",
    "write_atomic",
    "write_reports",
]

#: The marker put next to a cell that contains a LEAKY (``oracle-test``) result.
LEAKY_MARK = "†"
_LEAKY_NOTE = (
    f"{LEAKY_MARK} LEAKY: hyper-parameters/epochs selected on the test set (protocol "
    "oracle-test); not comparable with honest protocols."
)
#: Said of every TOY backbone, in tables, reports and plots.
TOY_WARNING = "it never saw a real image; these numbers say nothing about CLIP"


# -- reading ------------------------------------------------------------------------------
def row_checksum(row: dict[str, Any]) -> str:
    """xxHash3-64 of a results row without its own ``checksum`` field (canonical JSON: sorted
    keys), as ``run_bench`` records it in every row it writes."""
    import xxhash

    body = {k: v for k, v in row.items() if k != "checksum"}
    text = json.dumps(body, sort_keys=True, ensure_ascii=False, allow_nan=True)
    return str(xxhash.xxh3_64_hexdigest(text.encode("utf-8")))


def parse_row(line: bytes) -> tuple[dict[str, Any] | None, str]:
    """``(row, "")`` for a sound results line, ``(None, why)`` for a damaged one: not UTF-8 or
    JSON, not a JSON object, or failing its ``checksum`` (rows written before fewclip recorded
    one are not checked)."""
    try:
        obj = json.loads(line.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None, "not JSON"
    if not isinstance(obj, dict):
        return None, "not a JSON object"
    if "checksum" in obj and obj["checksum"] != row_checksum(obj):
        return None, "checksum mismatch"
    return obj, ""


def read_rows(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The sound rows of a JSONL results file, in file order.

    A last line without its newline (a run killed mid-write) is ignored with a warning; other
    damaged lines (not JSON, not an object, failing their checksum) are skipped and counted in
    one warning: their cells run again. A missing file raises ``FileNotFoundError``.
    """
    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"{p}: no such results file")
    raw = p.read_bytes()
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    rows: list[dict[str, Any]] = []
    bad: list[str] = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        obj, why = parse_row(line)
        if obj is None:
            if i == len(lines) and not raw.endswith(b"\n"):
                warnings.warn(
                    f"{p}: ignoring a truncated last line (line {i}, {len(line)} bytes; an "
                    "interrupted run); its cell will run again",
                    RuntimeWarning,
                    stacklevel=2,
                )
            else:
                bad.append(f"{i} ({why})")
            continue
        rows.append(obj)
    if bad:
        shown = ", ".join(bad[:10]) + (" ..." if len(bad) > 10 else "")
        warnings.warn(
            f"{p}: skipped {len(bad)} damaged line(s) (lines {shown}); their cells run again",
            RuntimeWarning,
            stacklevel=2,
        )
    return rows


# -- aggregation --------------------------------------------------------------------------
@dataclass(frozen=True)
class Stat:
    """Mean ± std (percent) of one table cell over ``n`` seeds."""

    mean: float
    std: float | None
    n: int
    seeds: tuple[int, ...]
    leaky: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": self.mean,
            "std": self.std,
            "n": self.n,
            "seeds": list(self.seeds),
            "leaky": self.leaky,
        }


@dataclass
class Table:
    """One dataset's table (or the average): ``cells[method][shots]``."""

    title: str
    methods: list[str]
    shots: list[int]
    cells: dict[str, dict[int, Stat]]
    datasets: list[str] = field(default_factory=list)  # for the average: included datasets
    excluded: list[str] = field(default_factory=list)  # for the average: left out

    @property
    def leaky(self) -> bool:
        return any(s.leaky for per in self.cells.values() for s in per.values())

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "title": self.title,
            "methods": list(self.methods),
            "shots": list(self.shots),
            "leaky": self.leaky,
            "cells": {
                m: {str(k): s.to_dict() for k, s in sorted(per.items())}
                for m, per in self.cells.items()
            },
        }
        if self.datasets or self.excluded:
            out["datasets"] = list(self.datasets)
            out["excluded"] = list(self.excluded)
        return out


@dataclass
class Group:
    """All tables of one (backbone, protocol). ``toy``: some row says its backbone is a toy
    (``toy: true``); ``backbone_note``: the first ``backbone_note`` of the group's rows."""

    backbone: str
    protocol: str
    tables: dict[str, Table]  # dataset → table, in dataset order
    average: Table | None
    toy: bool = False
    backbone_note: str | None = None

    @property
    def leaky(self) -> bool:
        return any(t.leaky for t in self.tables.values())


@dataclass
class Summary:
    groups: list[Group]
    n_rows: int
    duplicates: int = 0


def _method_label(row: Mapping[str, Any], variants: Mapping[str, list[str]]) -> str:
    m = str(row.get("method"))
    vs = variants.get(m, [])
    if len(vs) <= 1:
        return m
    return f"{m} #{vs.index(_variant(row)) + 1}"


def _variant(row: Mapping[str, Any]) -> str:
    cell = row.get("cell") or {}
    return json.dumps(
        {k: cell.get(k) for k in ("params", "views", "prompts", "protocol_options")},
        sort_keys=True,
    )


def _order(names: Iterable[str], preferred: Sequence[str]) -> list[str]:
    names = list(dict.fromkeys(names))
    rank = {n: i for i, n in enumerate(preferred)}
    return sorted(names, key=lambda n: (rank.get(n.split(" #")[0], len(rank)), n))


def _stat(values: list[tuple[int, float, bool]]) -> Stat:
    accs = [a for _, a, _ in values]
    mean = statistics.fmean(accs)
    std = statistics.stdev(accs) if len(accs) > 1 else None
    return Stat(
        mean, std, len(accs), tuple(sorted(s for s, _, _ in values)), any(lk for *_, lk in values)
    )


def summarize(
    rows: Iterable[Mapping[str, Any]],
    *,
    methods: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
) -> Summary:
    """Aggregate rows into per-dataset tables and an average, grouped by (backbone, protocol).

    Args:
        rows: JSONL rows (``run_bench`` output or ``read_rows``). Rows with the same ``hash``
            count once (the first).
        methods: table row order (e.g. ``config.methods``); default: the registry order
            (``fewclip.methods.available()``), unknown names after it alphabetically.
        datasets: table order of datasets; default: first appearance.

    When one method appears with several configurations (params, views, prompts) in the same
    group, each becomes its own table row, labelled ``method #1``, ``method #2`` in order of
    first appearance.
    """
    if methods is None:
        from fewclip import methods as registry

        methods = registry.available()
    seen: set[str] = set()
    uniq: list[Mapping[str, Any]] = []
    dups = 0
    for r in rows:
        h = r.get("hash")
        if isinstance(h, str):
            if h in seen:
                dups += 1
                continue
            seen.add(h)
        if not isinstance(r.get("accuracy"), (int, float)) or isinstance(r.get("accuracy"), bool):
            continue
        uniq.append(r)
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in uniq:
        groups.setdefault((str(r.get("backbone")), str(r.get("protocol"))), []).append(r)
    out: list[Group] = []
    for (backbone, protocol), grows in groups.items():
        variants: dict[str, list[str]] = {}
        for r in grows:
            vs = variants.setdefault(str(r.get("method")), [])
            v = _variant(r)
            if v not in vs:
                vs.append(v)
        ds_order = list(datasets) if datasets is not None else []
        ds_order += [
            d for d in dict.fromkeys(str(r.get("dataset")) for r in grows) if d not in ds_order
        ]
        values: dict[str, dict[str, dict[int, list[tuple[int, float, bool]]]]] = {}
        for r in grows:
            label = _method_label(r, variants)
            values.setdefault(str(r.get("dataset")), {}).setdefault(label, {}).setdefault(
                int(r["shots"]), []
            ).append((int(r["seed"]), float(r["accuracy"]), bool(r.get("leaky"))))
        tables: dict[str, Table] = {}
        for ds in ds_order:
            if ds not in values:
                continue
            per = values[ds]
            mlist = _order(per, methods)
            shots = sorted({k for m in per.values() for k in m})
            cells = {m: {k: _stat(v) for k, v in sorted(per[m].items())} for m in mlist}
            tables[ds] = Table(f"{ds} — {backbone} — {protocol}", mlist, shots, cells)
        notes = [str(r["backbone_note"]) for r in grows if r.get("backbone_note")]
        out.append(
            Group(
                backbone,
                protocol,
                tables,
                _average(tables, backbone, protocol, values, methods),
                toy=any(r.get("toy") is True for r in grows),
                backbone_note=notes[0] if notes else None,
            )
        )
    return Summary(out, len(uniq), dups)


def _average(
    tables: Mapping[str, Table],
    backbone: str,
    protocol: str,
    values: Mapping[str, Mapping[str, Mapping[int, list[tuple[int, float, bool]]]]],
    preferred: Sequence[str],
) -> Table | None:
    if not tables:
        return None
    all_methods = _order({m for t in tables.values() for m in t.methods}, preferred)
    all_shots = sorted({k for t in tables.values() for k in t.shots})
    included = [
        d
        for d, t in tables.items()
        if all(k in t.cells.get(m, {}) for m in all_methods for k in all_shots)
    ]
    excluded = [d for d in tables if d not in included]
    cells: dict[str, dict[int, Stat]] = {}
    if included:
        for m in all_methods:
            cells[m] = {}
            for k in all_shots:
                means = [tables[d].cells[m][k].mean for d in included]
                leaky = any(tables[d].cells[m][k].leaky for d in included)
                seed_sets = [{s for s, _, _ in values[d][m][k]} for d in included]
                common = sorted(set.intersection(*seed_sets))
                std = None
                if len(common) > 1 and all(s == set(common) for s in seed_sets):
                    per_seed = [
                        statistics.fmean(
                            next(a for s2, a, _ in values[d][m][k] if s2 == s) for d in included
                        )
                        for s in common
                    ]
                    std = statistics.stdev(per_seed)
                cells[m][k] = Stat(statistics.fmean(means), std, len(common), tuple(common), leaky)
    return Table(
        f"average over {len(included)} dataset(s) — {backbone} — {protocol}",
        all_methods if included else [],
        all_shots if included else [],
        cells,
        datasets=included,
        excluded=excluded,
    )


# -- rendering ----------------------------------------------------------------------------
def _fmt(s: Stat | None, digits: int) -> str:
    if s is None:
        return "–"
    txt = f"{s.mean:.{digits}f}"
    if s.std is not None:
        txt += f" ± {s.std:.{digits}f}"
    if s.leaky:
        txt += f" {LEAKY_MARK}"
    return txt


def _render(table: Table, fmt: str, digits: int) -> str:
    header = ["method", *[f"{k}-shot" for k in table.shots]]
    body = [
        [m, *[_fmt(table.cells.get(m, {}).get(k), digits) for k in table.shots]]
        for m in table.methods
    ]
    if fmt == "markdown":
        lines = [
            "| " + " | ".join(header) + " |",
            "|" + "|".join(["---", *["---:"] * len(table.shots)]) + "|",
        ]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    rule = "  ".join("-" * w for w in widths)
    out = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=False))
        )
        for r in [header, *body]
    ]
    return "\n".join([out[0], rule, *out[1:]])


def format_table(table: Table, fmt: str = "text", *, digits: int = 2) -> str:
    """One table (a dataset's or the average) as terminal text or markdown, without title."""
    if fmt not in ("text", "markdown"):
        raise InvalidValueError(f"fmt: expected 'text' or 'markdown', found {fmt!r}")
    return _render(table, fmt, digits)


def toy_warning(group: Group) -> str | None:
    """The one-line TOY BACKBONE warning of a toy group (``None`` for a real backbone)."""
    if not group.toy:
        return None
    note = f" ({group.backbone_note})" if group.backbone_note else ""
    return f"TOY BACKBONE: {group.backbone}{note}: {TOY_WARNING}."


def format_tables(summary: Summary, fmt: str = "text", *, digits: int = 2) -> str:
    """All tables of ``summary`` as terminal text (``"text"``) or GitHub markdown
    (``"markdown"``): per group, one table per dataset, then (with two datasets or more) the
    average with the datasets it covers. Top-1 accuracy in percent, mean ± std over seeds.
    Toy backbones get a TOY BACKBONE line first (bold in markdown) and TOY in their group
    header."""
    if fmt not in ("text", "markdown"):
        raise InvalidValueError(f"fmt: expected 'text' or 'markdown', found {fmt!r}")
    md = fmt == "markdown"
    parts: list[str] = []
    for line in dict.fromkeys(w for g in summary.groups if (w := toy_warning(g))):
        parts.append(f"**{line}**" if md else line)
    for g in summary.groups:
        head = (
            f"{g.backbone} — protocol {g.protocol}"
            + (" — TOY" if g.toy else "")
            + (" — LEAKY" if g.leaky else "")
        )
        parts.append(f"## {head}" if md else f"== {head} ==")
        # one dataset: its average would repeat its table
        average = [g.average] if g.average is not None and len(g.tables) > 1 else []
        for t in [*g.tables.values(), *average]:
            title = t.title + (" — LEAKY" if t.leaky else "")
            parts.append(f"### {title}" if md else title)
            if t is g.average:
                if not t.datasets:
                    parts.append(
                        "No dataset has a result for every method and shot count; no average."
                    )
                    continue
                note = f"Mean over datasets: {', '.join(t.datasets)}."
                if t.excluded:
                    note += (
                        f" Left out (missing some method or shot count): {', '.join(t.excluded)}."
                    )
                parts.append(note)
            parts.append(_render(t, fmt, digits))
        if g.leaky:
            parts.append(_LEAKY_NOTE)
    parts.append(
        "Top-1 accuracy (%), mean ± sample std over seeds."
        + (f" {summary.duplicates} duplicate row(s) ignored." if summary.duplicates else "")
    )
    return "\n\n".join(parts) + "\n"


def summary_json(summary: Summary) -> dict[str, Any]:
    """The machine-readable summary: groups → per-dataset tables and the average."""
    return _finite_json(
        {
            "format": "fewclip-bench-summary/1",
            "n_rows": summary.n_rows,
            "duplicates": summary.duplicates,
            "groups": [
                {
                    "backbone": g.backbone,
                    "protocol": g.protocol,
                    "leaky": g.leaky,
                    "toy": g.toy,
                    "backbone_note": g.backbone_note,
                    "datasets": {d: t.to_dict() for d, t in g.tables.items()},
                    "average": None if g.average is None else g.average.to_dict(),
                }
                for g in summary.groups
            ],
        }
    )


def _finite_json(o: Any) -> Any:
    """Non-finite floats (an empty test split) become ``None``: the summary is strict JSON."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite_json(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_finite_json(v) for v in o]
    return o


def write_atomic(path: str | os.PathLike[str], data: str | bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary sibling and a rename
    (``fewclip._io.atomic_write``)."""
    return atomic_write(path, data)


def write_reports(
    summary: Summary, out_dir: str | os.PathLike[str], stem: str = "results"
) -> list[Path]:
    """Write ``{stem}.md`` (markdown tables), ``{stem}.txt`` (terminal text) and
    ``{stem}.summary.json`` into ``out_dir``, each atomically; returns the paths."""
    d = Path(out_dir)
    return [
        write_atomic(d / f"{stem}.md", format_tables(summary, "markdown")),
        write_atomic(d / f"{stem}.txt", format_tables(summary, "text")),
        write_atomic(
            d / f"{stem}.summary.json",
            json.dumps(summary_json(summary), indent=2, allow_nan=False) + "\n",
        ),
    ]
