"""Split JSON files: every few-shot draw written down so a run can be inspected and repeated.

Format (``"format": "fewclip.split/1"``)::

    {
      "format": "fewclip.split/1",
      "dataset": "caltech101", "root": "/data/caltech-101",
      "protocol": "fewshot-val", "leaky": false,
      "shots": 16, "seed": 1, "sampler": "sample_fewshot_val", ...,
      "classnames": ["accordion", ...],
      "parts": {
        "support": {"split": "train", "n_split": 4128, "fingerprint": "<sha256>",
                    "indices": [...], "items": [["accordion/image_0001.jpg", 0], ...]},
        "val":     {... or null},
        "test":    {"split": "test", "n_split": 2465, "fingerprint": "<sha256>"}
      }
    }

``indices`` index the split's ``ImageList`` (its order is fixed by the reader); ``items`` repeat
the paths and labels so the file can be read without the dataset. ``fingerprint`` is
``ImageList.fingerprint()`` of the whole split. A part without ``indices`` means the whole split.
Writes are atomic (temporary file, then rename). Only JSON is ever read (never pickle).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fewclip._io import atomic_write
from fewclip.data.types import Dataset, DatasetError, ImageList, safe_relpath
from fewclip.errors import InvalidValueError, OutOfRangeError
from fewclip.protocol import Protocol, SplitPlan, no_val_message

__all__ = [
    "SPLIT_FORMAT",
    "atomic_write_text",
    "plan_dataset",
    "read_split",
    "resolve_split",
    "save_plan",
    "write_split",
]

SPLIT_FORMAT = "fewclip.split/1"


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically (``fewclip._io.atomic_write``)."""
    return atomic_write(path, text)


def _part(lst: ImageList, split: str, indices: Sequence[int] | None) -> dict[str, Any]:
    d: dict[str, Any] = {"split": split, "n_split": len(lst), "fingerprint": lst.fingerprint()}
    if indices is not None:
        idx = [int(i) for i in indices]
        bad = [i for i in idx if not 0 <= i < len(lst)]
        if bad:
            raise OutOfRangeError(
                f"{lst.name}: indices {bad[:5]} out of range for {len(lst)} images"
            )
        d["indices"] = idx
        d["items"] = [[lst.paths[i], lst.labels[i]] for i in idx]
    return d


def write_split(
    path: str | os.PathLike[str],
    dataset: Dataset,
    parts: Mapping[str, tuple[str, Sequence[int] | None] | None],
    *,
    shots: int | str,
    seed: int,
    protocol: str,
    leaky: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a draw as a split JSON (atomically) and return its path.

    Args:
        dataset: the dataset the indices refer to.
        parts: role → ``(split name, indices)`` (``None`` indices: the whole split) or ``None``
            (no such role, e.g. no validation under ``val-free``). Roles are typically
            ``support``, ``val`` and ``test``.
        shots, seed, protocol, leaky: recorded as they are.
        extra: more JSON-able fields (sampler, val_shots, repeat, ...).
    """
    rec: dict[str, Any] = {
        "format": SPLIT_FORMAT,
        "dataset": dataset.name,
        "root": str(dataset.root),
        "protocol": protocol,
        "leaky": bool(leaky),
        "shots": shots if shots == "all" else int(shots),
        "seed": int(seed),
    }
    if extra:
        for k, v in extra.items():
            if k in rec or k in ("classnames", "parts"):
                raise InvalidValueError(f"extra: key {k!r} is reserved")
            rec[k] = v
    rec["classnames"] = list(dataset.classnames)
    rec["parts"] = {
        role: None if spec is None else _part(dataset.split(spec[0]), spec[0], spec[1])
        for role, spec in parts.items()
    }
    try:
        from fewclip._version import __version__

        rec["fewclip_version"] = __version__
    except ImportError:  # pragma: no cover
        pass
    text = json.dumps(rec, ensure_ascii=False, indent=1)
    return atomic_write_text(path, text + "\n")


def read_split(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a split JSON written by ``write_split``.

    Raises ``DatasetError`` naming the file and the offending field for a wrong format, missing
    fields, entries that are not ``[relative path, label]``, labels outside the class list, and
    ``indices``/``items`` of different lengths.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"split file not found: {path}")
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(rec, dict) or rec.get("format") != SPLIT_FORMAT:
        found = rec.get("format") if isinstance(rec, dict) else type(rec).__name__
        raise DatasetError(f"{path}: expected format {SPLIT_FORMAT!r}, found {found!r}")
    for key in ("dataset", "protocol", "shots", "seed", "classnames", "parts"):
        if key not in rec:
            raise DatasetError(f"{path}: missing field {key!r}")
    classnames = rec["classnames"]
    if not isinstance(classnames, list) or not all(isinstance(c, str) for c in classnames):
        raise DatasetError(f"{path}: 'classnames' must be a list of strings")
    if not isinstance(rec["parts"], dict):
        raise DatasetError(f"{path}: 'parts' must be an object")
    for role, part in rec["parts"].items():
        if part is None:
            continue
        where = f"{path} parts.{role}"
        if not isinstance(part, dict) or "split" not in part:
            raise DatasetError(f"{where}: expected an object with 'split'")
        if "indices" in part:
            idx, items = part["indices"], part.get("items")
            if not isinstance(idx, list) or not isinstance(items, list) or len(idx) != len(items):
                raise DatasetError(f"{where}: 'indices' and 'items' must be lists of equal length")
            for i, item in enumerate(items):
                w = f"{where}.items[{i}]"
                if not isinstance(item, list) or len(item) != 2:
                    raise DatasetError(f"{w}: expected [path, label], found {item!r}")
                safe_relpath(item[0], where=w)
                y = item[1]
                if isinstance(y, bool) or not isinstance(y, int) or not 0 <= y < len(classnames):
                    raise DatasetError(
                        f"{w}: label {y!r} outside [0, {len(classnames)}) for the class list"
                    )
    return rec


def resolve_split(rec: Mapping[str, Any], dataset: Dataset, role: str) -> ImageList | None:
    """The ``ImageList`` that part ``role`` of a split record selects from ``dataset``.

    Verifies the record against the dataset: same class names, and for every chosen index the
    same path and label as recorded (a changed split file or image folder is an error naming the
    first mismatch).
    """
    part = rec["parts"].get(role)
    if part is None:
        return None
    if list(rec["classnames"]) != list(dataset.classnames):
        raise DatasetError(
            f"split record of {rec['dataset']!r}: class names differ from dataset {dataset.name!r}"
        )
    lst = dataset.split(part["split"])
    if "indices" not in part:
        return lst
    for i, (idx, (p, y)) in enumerate(zip(part["indices"], part["items"], strict=True)):
        if not 0 <= idx < len(lst) or lst.paths[idx] != p or lst.labels[idx] != y:
            found = (lst.paths[idx], lst.labels[idx]) if 0 <= idx < len(lst) else "out of range"
            raise DatasetError(
                f"split record part {role!r} entry {i}: index {idx} is {found} in "
                f"{lst.name}, but the record says {(p, y)}; the dataset changed since the draw"
            )
    return lst.subset(part["indices"], name=f"{lst.name}[{role}]")


def plan_dataset(
    protocol: str | Protocol, dataset: Dataset, *, shots: int | str, seed: int
) -> SplitPlan:
    """``Protocol(protocol).plan(...)`` with the labels of a ``fewclip.data.Dataset`` (its
    train labels, its val labels where the protocol validates on the val split, the size of its
    test split for ``oracle-test``, and its class names)."""
    proto = protocol if isinstance(protocol, Protocol) else Protocol(protocol)
    needs_val = proto.name in ("coop-val", "full-val")
    if needs_val and not dataset.has_split("val"):
        raise InvalidValueError(no_val_message(proto.name, dataset.name))
    return proto.plan(
        dataset.split("train").labels,
        shots=shots,
        seed=seed,
        val_labels=dataset.split("val").labels if needs_val else None,
        n_test=len(dataset.split("test")) if proto.leaky else None,
        classnames=dataset.classnames,
    )


def save_plan(plan: SplitPlan, path: str | os.PathLike[str], dataset: Dataset) -> Path:
    """Write ``plan``'s draw of ``dataset`` as a split JSON (paths, labels, class names, seed,
    protocol; the test split by reference), atomically. Returns the path."""
    parts: dict[str, tuple[str, Sequence[int] | None] | None] = {
        "support": (plan.support.split, plan.support.indices),
        "val": None if plan.val is None else (plan.val.split, plan.val.indices),
    }
    if dataset.has_split("test"):
        parts["test"] = ("test", None)
    return write_split(
        path,
        dataset,
        parts,
        shots=plan.shots,
        seed=plan.seed,
        protocol=plan.protocol,
        leaky=plan.leaky,
        extra={"plan": plan.meta},
    )
