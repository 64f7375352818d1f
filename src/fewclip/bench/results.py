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
from fewclip.generalisation import BASE_TO_NEW, GENERALISATION_PROTOCOLS, harmonic_mean

__all__ = [
    "LEAKY_MARK",
    "TOY_WARNING",
    "GenCell",
    "GenGroup",
    "GenTable",
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


@dataclass(frozen=True)
class GenCell:
    """One cell of a generalisation table: a ``Stat`` (percent, over seeds), or ``None`` with
    the ``reason`` the method has no number there (it cannot score new classes)."""

    stat: Stat | None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "stat": None if self.stat is None else self.stat.to_dict(),
            "reason": self.reason,
        }


@dataclass
class GenTable:
    """A generalisation table: rows = methods, ``columns`` = ``base``, ``new``, ``H``
    (base-to-new) or the source dataset, each target and ``average`` (cross-dataset, domain
    generalisation); ``cells[method][column]``. ``dataset`` is the dataset or source, or
    ``"average"`` for base-to-new's average over datasets (``datasets``: included;
    ``excluded``: left out, missing some method)."""

    title: str
    dataset: str
    shots: int
    methods: list[str]
    columns: list[str]
    cells: dict[str, dict[str, GenCell]]
    datasets: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "title": self.title,
            "dataset": self.dataset,
            "shots": self.shots,
            "methods": list(self.methods),
            "columns": list(self.columns),
            "cells": {
                m: {c: cell.to_dict() for c, cell in per.items()} for m, per in self.cells.items()
            },
        }
        if self.dataset == "average":
            out["datasets"] = list(self.datasets)
            out["excluded"] = list(self.excluded)
        return out


@dataclass
class GenGroup:
    """All tables of one (backbone, generalisation protocol, validation protocol)."""

    backbone: str
    protocol: str
    validation: str
    tables: list[GenTable]
    toy: bool = False
    backbone_note: str | None = None


@dataclass
class Summary:
    groups: list[Group]
    n_rows: int
    duplicates: int = 0
    generalisation: list[GenGroup] = field(default_factory=list)


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
    general = [r for r in uniq if r.get("protocol") in GENERALISATION_PROTOCOLS]
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in uniq:
        if r.get("protocol") in GENERALISATION_PROTOCOLS:
            continue
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
    return Summary(out, len(uniq), dups, _summarize_generalisation(general, methods, datasets))


# -- generalisation protocols -----------------------------------------------------------------
def _seed_stat(values: list[tuple[int, float]]) -> Stat:
    return _stat([(seed, acc, False) for seed, acc in values])


def _summarize_generalisation(
    rows: list[Mapping[str, Any]], preferred: Sequence[str], datasets: Sequence[str] | None
) -> list[GenGroup]:
    """The generalisation rows' tables, grouped by (backbone, protocol, validation)."""
    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        key = (str(r.get("backbone")), str(r.get("protocol")), str(r.get("validation")))
        groups.setdefault(key, []).append(r)
    out: list[GenGroup] = []
    for (backbone, protocol, validation), grows in groups.items():
        variants: dict[str, list[str]] = {}
        for r in grows:
            vs = variants.setdefault(str(r.get("method")), [])
            if _variant(r) not in vs:
                vs.append(_variant(r))
        order = list(datasets) if datasets is not None else []
        order += [d for d in dict.fromkeys(str(r.get("dataset")) for r in grows) if d not in order]
        shots = sorted({int(r["shots"]) for r in grows})
        tables: list[GenTable] = []
        for k in shots:
            krows = [r for r in grows if int(r["shots"]) == k]
            if protocol == BASE_TO_NEW:
                per = [
                    t
                    for d in order
                    if (t := _b2n_table(krows, d, k, backbone, variants, preferred)) is not None
                ]
                tables += per
                if len(per) > 1:
                    tables.append(_b2n_average(per, k, backbone, preferred))
            else:
                for d in order:
                    t = _transfer_table(krows, d, k, backbone, protocol, variants, preferred)
                    if t is not None:
                        tables.append(t)
        notes = [str(r["backbone_note"]) for r in grows if r.get("backbone_note")]
        out.append(
            GenGroup(
                backbone,
                protocol,
                validation,
                tables,
                toy=any(r.get("toy") is True for r in grows),
                backbone_note=notes[0] if notes else None,
            )
        )
    return out


def _b2n_table(
    rows: list[Mapping[str, Any]],
    dataset: str,
    shots: int,
    backbone: str,
    variants: Mapping[str, list[str]],
    preferred: Sequence[str],
) -> GenTable | None:
    """One dataset's base / new / H table; H is the harmonic mean of the mean base and new
    accuracies (the papers' per-dataset H)."""
    values: dict[str, dict[str, list[tuple[int, float]]]] = {}
    reasons: dict[str, str] = {}
    for r in rows:
        if str(r.get("dataset")) != dataset:
            continue
        label = _method_label(r, variants)
        splits = r.get("splits") or {}
        per = values.setdefault(label, {"base": [], "new": []})
        for split in ("base", "new"):
            acc = (splits.get(split) or {}).get("accuracy")
            if isinstance(acc, (int, float)) and not isinstance(acc, bool):
                per[split].append((int(r["seed"]), float(acc)))
        if r.get("not_applicable"):
            reasons[label] = str(r["not_applicable"])
    if not values:
        return None
    methods = _order(values, preferred)
    cells: dict[str, dict[str, GenCell]] = {}
    for m in methods:
        base = _seed_stat(values[m]["base"]) if values[m]["base"] else None
        new = _seed_stat(values[m]["new"]) if values[m]["new"] else None
        why = reasons.get(m)
        cells[m] = {
            "base": GenCell(base),
            "new": GenCell(new, why if new is None else None),
            "H": _harmonic_cell(base, new, why),
        }
    title = f"{dataset} — {backbone} — base-to-new — {shots}-shot"
    return GenTable(title, dataset, shots, methods, ["base", "new", "H"], cells)


def _harmonic_cell(base: Stat | None, new: Stat | None, why: str | None) -> GenCell:
    if base is None or new is None:
        return GenCell(None, why)
    h = harmonic_mean(base.mean, new.mean)
    assert h is not None
    seeds = tuple(sorted(set(base.seeds) & set(new.seeds)))
    return GenCell(Stat(h, None, len(seeds), seeds))


def _b2n_average(
    tables: list[GenTable], shots: int, backbone: str, preferred: Sequence[str]
) -> GenTable:
    """The average over datasets (CoCoOp's Table 1 (a)): base and new averaged over the
    datasets that have every method's base result; H of the averages."""
    methods = _order({m for t in tables for m in t.methods}, preferred)
    included = [
        t
        for t in tables
        if all(t.cells.get(m, {}).get("base", GenCell(None)).stat for m in methods)
    ]
    cells: dict[str, dict[str, GenCell]] = {}
    for m in methods:
        row: dict[str, GenCell] = {}
        for split in ("base", "new"):
            got = [t.cells[m][split] for t in included]
            stats = [c.stat for c in got]
            if included and all(s is not None for s in stats):
                means = [s.mean for s in stats if s is not None]
                row[split] = GenCell(Stat(statistics.fmean(means), None, len(means), ()))
            else:
                reason = next((c.reason for c in got if c.reason), None)
                row[split] = GenCell(None, reason)
        row["H"] = _harmonic_cell(row["base"].stat, row["new"].stat, row["new"].reason)
        cells[m] = row
    n = len(included)
    return GenTable(
        f"average over {n} dataset(s) — {backbone} — base-to-new — {shots}-shot",
        "average",
        shots,
        methods if included else [],
        ["base", "new", "H"],
        cells if included else {},
        datasets=[t.dataset for t in included],
        excluded=[t.dataset for t in tables if t not in included],
    )


def _transfer_table(
    rows: list[Mapping[str, Any]],
    source: str,
    shots: int,
    backbone: str,
    protocol: str,
    variants: Mapping[str, list[str]],
    preferred: Sequence[str],
) -> GenTable | None:
    """One source's table: its own test set, each target and the average over targets (mean
    ± std over seeds of each seed's average)."""
    mine = [r for r in rows if str(r.get("dataset")) == source]
    if not mine:
        return None
    targets = list(dict.fromkeys(t for r in mine for t in (r.get("targets") or {})))
    columns = [source, *targets, "average"]
    values: dict[str, dict[str, list[tuple[int, float]]]] = {}
    reasons: dict[str, dict[str, str]] = {}
    for r in mine:
        label = _method_label(r, variants)
        per = values.setdefault(label, {c: [] for c in columns})
        seed = int(r["seed"])
        per[source].append((seed, float(r["accuracy"])))
        for t, entry in (r.get("targets") or {}).items():
            acc = entry.get("accuracy")
            if isinstance(acc, (int, float)) and not isinstance(acc, bool):
                per[t].append((seed, float(acc)))
            elif entry.get("reason"):
                reasons.setdefault(label, {})[t] = str(entry["reason"])
        avg = r.get("target_average")
        if isinstance(avg, (int, float)) and not isinstance(avg, bool):
            per["average"].append((seed, float(avg)))
    methods = _order(values, preferred)
    cells: dict[str, dict[str, GenCell]] = {}
    for m in methods:
        why = reasons.get(m, {})
        some = next(iter(why.values()), None)
        cells[m] = {
            c: GenCell(
                _seed_stat(values[m][c]) if values[m][c] else None,
                None if values[m][c] else why.get(c, some if c == "average" else None),
            )
            for c in columns
        }
    title = f"{source} → targets — {backbone} — {protocol} — {shots}-shot"
    return GenTable(title, source, shots, methods, columns, cells)


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
    return _grid(header, body, fmt)


def _grid(header: list[str], body: list[list[str]], fmt: str) -> str:
    """Rows under a header as a markdown table or aligned terminal text (first column left,
    the others right)."""
    if fmt == "markdown":
        lines = [
            "| " + " | ".join(header) + " |",
            "|" + "|".join(["---", *["---:"] * (len(header) - 1)]) + "|",
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


class _Notes:
    """Numbered footnotes ``[1]``, ``[2]`` … for the reasons a cell has no number."""

    def __init__(self) -> None:
        self.reasons: dict[str, str] = {}

    def mark(self, reason: str) -> str:
        return self.reasons.setdefault(reason, f"[{len(self.reasons) + 1}]")

    def lines(self) -> list[str]:
        return [f"{m} n/a: {r}." for r, m in self.reasons.items()]


def _gen_fmt(cell: GenCell | None, digits: int, notes: _Notes) -> str:
    if cell is None or cell.stat is None:
        if cell is not None and cell.reason:
            return f"n/a {notes.mark(cell.reason)}"
        return "–"
    return _fmt(cell.stat, digits)


def _render_gen(
    table: GenTable, fmt: str, digits: int, notes: _Notes, papers: Sequence[Any]
) -> str:
    header = ["method", *table.columns]
    body = [
        [m, *[_gen_fmt(table.cells.get(m, {}).get(c), digits, notes) for c in table.columns]]
        for m in table.methods
    ]
    for p in papers:
        body.append(
            [
                f"{p.label} ({p.key})",
                *[f"{p.values[c]:.{digits}f}" if c in p.values else "–" for c in table.columns],
            ]
        )
    return _grid(header, body, fmt)


def _backbone_key(name: str) -> str:
    """``"ViT-B/16"``, ``"ViT-B-16-quickgelu"`` → ``"vitb16"``: to match the papers' backbone."""
    key = "".join(ch for ch in name.lower() if ch.isalnum())
    return key.replace("quickgelu", "").replace("openai", "")


def _papers(protocol: str, backbone: str, table: GenTable) -> list[Any]:
    """The published rows for ``table``: same protocol, dataset (an average only over the
    papers' 11 datasets), shots and backbone; none otherwise."""
    from fewclip.generalisation import CROSS_DATASET_TARGETS
    from fewclip.reproduce import generalisation_papers

    if table.dataset == "average" and set(table.datasets) != {"imagenet", *CROSS_DATASET_TARGETS}:
        return []
    found = generalisation_papers(protocol, table.dataset, table.shots)
    return [p for p in found if _backbone_key(p.backbone) == _backbone_key(backbone)]


def _format_generalisation(g: GenGroup, fmt: str, digits: int) -> list[str]:
    """The parts of one generalisation group: header, tables (with the papers' rows where
    published numbers exist), footnotes."""
    md = fmt == "markdown"
    head = f"{g.backbone} — protocol {g.protocol} (validation {g.validation})" + (
        " — TOY" if g.toy else ""
    )
    parts = [f"## {head}" if md else f"== {head} =="]
    notes = _Notes()
    sources: dict[str, str] = {}
    for t in g.tables:
        parts.append(f"### {t.title}" if md else t.title)
        if t.dataset == "average":
            if not t.datasets:
                parts.append("No dataset has a base result for every method; no average.")
                continue
            note = f"Mean over datasets: {', '.join(t.datasets)}; H of the means."
            if t.excluded:
                note += f" Left out (missing some method): {', '.join(t.excluded)}."
            parts.append(note)
        papers = _papers(g.protocol, g.backbone, t)
        for p in papers:
            sources.setdefault(p.key, p.citation + (f" ({p.checked})" if p.checked else ""))
        parts.append(_render_gen(t, fmt, digits, notes, papers))
    if g.protocol == BASE_TO_NEW:
        parts.append(
            "base: base classes' test images, base classes only; new: new classes' test "
            "images, new classes only (the method never saw them); H = 2·base·new/(base + new) "
            "of the mean accuracies."
        )
    elif g.protocol == "domain-generalisation":
        parts.append(
            "Each target is scored with the source's classifier restricted to the target's "
            "classes (ImageNet-A/-R: 200 of the 1000)."
        )
    parts += notes.lines()
    parts += [f"({key}): {citation}" for key, citation in sources.items()]
    return parts


def format_table(table: Table, fmt: str = "text", *, digits: int = 2) -> str:
    """One table (a dataset's or the average) as terminal text or markdown, without title."""
    if fmt not in ("text", "markdown"):
        raise InvalidValueError(f"fmt: expected 'text' or 'markdown', found {fmt!r}")
    return _render(table, fmt, digits)


def toy_warning(group: Group | GenGroup) -> str | None:
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
    every: list[Group | GenGroup] = [*summary.groups, *summary.generalisation]
    for line in dict.fromkeys(w for g in every if (w := toy_warning(g))):
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
    for gg in summary.generalisation:
        parts += _format_generalisation(gg, fmt, digits)
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
            "generalisation": [
                {
                    "backbone": g.backbone,
                    "protocol": g.protocol,
                    "validation": g.validation,
                    "toy": g.toy,
                    "backbone_note": g.backbone_note,
                    "tables": [t.to_dict() for t in g.tables],
                }
                for g in summary.generalisation
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
