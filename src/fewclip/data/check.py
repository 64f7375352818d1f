"""``check(root, dataset)``: verify a benchmark on disk against the known split sizes."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from fewclip.data.benchmarks.readers import load_benchmark
from fewclip.data.benchmarks.specs import get_spec
from fewclip.data.types import DatasetError

__all__ = ["CheckReport", "check"]


@dataclass
class CheckReport:
    """What ``check`` found.

    Attributes:
        dataset: canonical benchmark name.
        root: the ``$DATA`` folder checked.
        ok: True when the dataset reads and every count matches.
        n_classes: classes found (``None`` if it could not be read).
        counts: images per split found.
        expected: the published counts (classes and images per split).
        problems: one line per mismatch or error.
        warnings: notes that do not make the check fail (skipped files, partial subsets).
    """

    dataset: str
    root: str
    ok: bool
    n_classes: int | None
    counts: dict[str, int]
    expected: dict[str, Any]
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"{self.dataset} at {self.root}: {'OK' if self.ok else 'PROBLEMS'}"]
        exp_c = self.expected.get("n_classes")
        lines.append(f"  classes: {self.n_classes} (expected {exp_c})")
        for split, n in self.expected.get("sizes", {}).items():
            lines.append(f"  {split}: {self.counts.get(split, '-')} (expected {n})")
        lines.extend(f"  problem: {p}" for p in self.problems)
        lines.extend(f"  note: {w}" for w in self.warnings)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "root": self.root,
            "ok": self.ok,
            "n_classes": self.n_classes,
            "counts": self.counts,
            "expected": self.expected,
            "problems": self.problems,
            "warnings": self.warnings,
        }


def check(root: str | os.PathLike[str], dataset: str, *, verify_files: bool = True) -> CheckReport:
    """Read ``dataset`` from ``root`` (``$DATA``) and compare it with the published split sizes.

    Never raises for a broken dataset: read errors (missing files, bad split entries, missing
    images) become ``problems``. Class count and per-split image counts must equal the CoOp
    numbers (ImageNet: 1,281,167 train / 50,000 test; -A: 200 classes / 7,500 ...).
    """
    spec = get_spec(dataset)
    expected = {"n_classes": spec.n_classes, "sizes": dict(spec.sizes)}
    report = CheckReport(spec.name, str(root), False, None, {}, expected)
    try:
        ds = load_benchmark(spec.name, root, verify_files=verify_files)
    except (DatasetError, OSError) as e:
        report.problems.append(str(e))
        return report
    report.n_classes = ds.n_classes
    report.counts = {k: len(v) for k, v in ds.splits.items()}
    if ds.n_classes != spec.n_classes:
        report.problems.append(f"found {ds.n_classes} classes, expected {spec.n_classes}")
    for split, n in spec.sizes.items():
        got = report.counts.get(split)
        if got != n:
            report.problems.append(f"{split}: found {got} images, expected {n}")
    extra = sorted(set(report.counts) - set(spec.sizes))
    if extra:
        report.problems.append(f"unexpected splits {extra}")
    if "skipped" in ds.meta:
        report.warnings.append(f"skipped {ds.meta['skipped']['count']} non-image files")
    if ds.meta.get("missing_classes"):
        report.problems.append(f"{len(ds.meta['missing_classes'])} class folders are missing")
    report.ok = not report.problems
    return report
