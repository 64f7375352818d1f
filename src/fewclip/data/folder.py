"""User datasets: an image folder, a CSV/JSONL manifest, or a Hugging Face image dataset.

Class names come from folder names or label values with ``_`` turned into spaces; a
``classnames.json`` next to the data overrides them (a list in class order, or an object
folder/label → name). Splits come from ``train/``, ``val/``, ``test/`` subfolders or a ``split``
column when present; otherwise a seeded stratified split (CoOp's recipe: per class, shuffle with
``random.Random(seed)``, then 50% train, 20% val, the rest test).
"""

from __future__ import annotations

import csv
import json
import os
import random
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fewclip.data.types import (
    IMAGE_EXTENSIONS,
    Dataset,
    DatasetError,
    ImageList,
    MissingDataError,
    safe_relpath,
    spaced,
)
from fewclip.errors import InvalidValueError, MissingExtraError, count_of

__all__ = ["load_folder", "load_hf", "load_manifest", "stratified_split"]

_SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}
_SPLITS = ("train", "val", "test")


def stratified_split(
    labels: Sequence[int],
    *,
    seed: int,
    train_fraction: float = 0.5,
    val_fraction: float = 0.2,
    where: str = "dataset",
    classnames: Sequence[str] | None = None,
) -> dict[str, list[int]]:
    """Seeded per-class split of item indices into train / val / test (CoOp's recipe).

    Classes are visited in ascending label order; each class's indices are shuffled with one
    ``random.Random(seed)`` and cut into ``round(n·train_fraction)`` train,
    ``round(n·val_fraction)`` val and the rest test (one val image fewer when that would leave no
    test image). A class that would still get no training or no test image is an error naming it.
    """
    if not (0 < train_fraction < 1 and 0 <= val_fraction < 1 and train_fraction + val_fraction < 1):
        raise InvalidValueError(
            f"fractions: need 0 < train < 1, 0 ≤ val and train + val < 1, found "
            f"train={train_fraction}, val={val_fraction}"
        )
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(int(y), []).append(i)
    out: dict[str, list[int]] = {s: [] for s in _SPLITS}
    for y in sorted(by_class):
        items = list(by_class[y])
        n = len(items)
        n_train = round(n * train_fraction)
        n_val = round(n * val_fraction)
        if n - n_train - n_val < 1 and n_val > 0:
            n_val -= 1  # small class: keep a test image rather than a validation image
        if n_train < 1 or n - n_train - n_val < 1:
            cname = classnames[y] if classnames is not None else str(y)
            raise DatasetError(
                f"{where}: class {cname!r} has {count_of(n, 'image')}, too few for a "
                f"{train_fraction:.0%}/{val_fraction:.0%}/rest split; add images or provide "
                "train/ and test/ subfolders (or a split column)"
            )
        rng.shuffle(items)
        out["train"].extend(items[:n_train])
        out["val"].extend(items[n_train : n_train + n_val])
        out["test"].extend(items[n_train + n_val :])
    for s in _SPLITS:
        out[s].sort()
    return out


def _read_classnames_json(
    path: Path, keys: Sequence[str], defaults: Sequence[str]
) -> tuple[list[str], str]:
    """Override ``defaults`` (one per key, in class order) with ``path`` if it exists."""
    if not path.is_file():
        return list(defaults), "folder names"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from None
    if isinstance(data, list):
        if len(data) != len(keys):
            raise DatasetError(
                f"{path}: a list must give one name per class in sorted order; "
                f"{len(keys)} classes ({', '.join(keys[:5])}...) but {len(data)} names"
            )
        bad = [i for i, v in enumerate(data) if not isinstance(v, str) or not v.strip()]
        if bad:
            raise DatasetError(
                f"{path}: entry {bad[0]} is not a non-empty string: {data[bad[0]]!r}"
            )
        return [str(v) for v in data], str(path)
    if isinstance(data, dict):
        unknown = [k for k in data if k not in keys]
        if unknown:
            raise DatasetError(
                f"{path}: keys {unknown[:5]} match no class (classes: {', '.join(keys[:10])}"
                f"{'...' if len(keys) > 10 else ''})"
            )
        names = list(defaults)
        for i, k in enumerate(keys):
            if k in data:
                v = data[k]
                if not isinstance(v, str) or not v.strip():
                    raise DatasetError(
                        f"{path}: name of {k!r} must be a non-empty string, found {v!r}"
                    )
                names[i] = v
        return names, str(path)
    raise DatasetError(
        f"{path}: expected a list of names or an object class → name, found {type(data).__name__}"
    )


def _walk_images(folder: Path, rel_to: Path) -> tuple[list[str], list[str]]:
    """Image paths under ``folder`` (recursive, sorted) relative to ``rel_to``; skipped files."""
    images: list[str] = []
    skipped: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if f.startswith("."):
                continue
            rel = Path(dirpath, f).relative_to(rel_to).as_posix()
            if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS:
                images.append(rel)
            else:
                skipped.append(rel)
    return images, skipped


def _subdirs(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _warn_skipped(name: str, skipped: list[str], meta: dict[str, Any]) -> None:
    if skipped:
        meta["skipped"] = {"count": len(skipped), "examples": skipped[:10]}
        shown = ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        warnings.warn(
            f"{name}: skipped {len(skipped)} files that are not images: {shown}", stacklevel=3
        )


def _split_folders(root: Path, top: list[str]) -> dict[str, str]:
    """Split name → its folder under ``root`` (``train``/``training``, ``val``/``valid``/
    ``validation``/``dev``, ``test``/``testing``, any case). Once a split folder is there, every
    other folder must be one too: a folder that is neither is an error, never skipped."""
    found: dict[str, str] = {}
    for name in top:
        split = _SPLIT_NAMES.get(name.lower())
        if split is None:
            continue
        if split in found:
            raise DatasetError(
                f"{root}: both {found[split]}/ and {name}/ are {split} folders; keep one"
            )
        found[split] = name
    if found:
        other = [name for name in top if name.lower() not in _SPLIT_NAMES]
        if other and "train" in found:
            raise DatasetError(
                f"{root}: {', '.join(o + '/' for o in other)} next to the split folders "
                f"{', '.join(f + '/' for f in found.values())}; expected only train/, val/ "
                "(or validation/, valid/, dev/) and test/ holding the class folders"
            )
    return found


def load_folder(
    root: str | os.PathLike[str],
    *,
    seed: int = 0,
    train_fraction: float = 0.5,
    val_fraction: float = 0.2,
    name: str | None = None,
) -> Dataset:
    """Read an image folder: ``root/<class>/*`` or ``root/{train,val,test}/<class>/*``.

    With a ``train/`` subfolder, its class folders (sorted) define the classes and ``val/`` and
    ``test/`` are used when present (their class folders must exist in ``train/``);
    ``training/``, ``validation/``, ``valid/``, ``dev/`` and ``testing/`` are read as the same
    splits (any case), and any other folder beside them is an error. Without one,
    ``stratified_split`` cuts each class into train/val/test with ``seed``. Images are found
    recursively inside a class folder; other files are skipped with a warning and counted in
    ``meta["skipped"]``. An empty class folder is an error.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise MissingDataError(
            f"image folder not found: {root}\nExpected layout: {root}/<class>/<image> or "
            f"{root}/train/<class>/<image> (+ optional val/ and test/)"
        )
    ds_name = name or f"folder:{root.name}"
    meta: dict[str, Any] = {"source": "folder", "root": str(root)}
    top = _subdirs(root)
    folder_of = _split_folders(root, top)
    split_dirs = [s for s in _SPLITS if s in folder_of]
    skipped: list[str] = []
    if split_dirs:
        if "train" not in split_dirs:
            raise DatasetError(
                f"{root}: found {'/'.join(folder_of[s] for s in split_dirs)}/ but no train/ "
                "subfolder; add train/ or put class folders directly under the root"
            )
        train_dir = root / folder_of["train"]
        classes = _subdirs(train_dir)
        if not classes:
            raise DatasetError(f"{train_dir}: no class folders")
        index = {c: i for i, c in enumerate(classes)}
        raw: dict[str, tuple[list[str], list[int]]] = {}
        for split in split_dirs:
            sdir = root / folder_of[split]
            paths: list[str] = []
            labels: list[int] = []
            for c in _subdirs(sdir):
                if c not in index:
                    raise DatasetError(
                        f"{sdir / c}: class folder {c!r} does not exist in {train_dir}"
                    )
                imgs, skip = _walk_images(sdir / c, root)
                if not imgs:
                    raise DatasetError(f"{sdir / c}: empty class folder (no images)")
                paths.extend(imgs)
                labels.extend([index[c]] * len(imgs))
                skipped.extend(skip)
            raw[split] = (paths, labels)
        meta["split"] = "folders"
    else:
        classes = top
        if not classes:
            raise DatasetError(f"{root}: no class folders (expected {root}/<class>/<image>)")
        index = {c: i for i, c in enumerate(classes)}
        all_paths: list[str] = []
        all_labels: list[int] = []
        for c in classes:
            imgs, skip = _walk_images(root / c, root)
            if not imgs:
                raise DatasetError(f"{root / c}: empty class folder (no images)")
            all_paths.extend(imgs)
            all_labels.extend([index[c]] * len(imgs))
            skipped.extend(skip)
        parts = stratified_split(
            all_labels,
            seed=seed,
            train_fraction=train_fraction,
            val_fraction=val_fraction,
            where=str(root),
            classnames=classes,
        )
        raw = {
            s: ([all_paths[i] for i in idx], [all_labels[i] for i in idx])
            for s, idx in parts.items()
            if idx
        }
        meta["split"] = {
            "kind": "stratified",
            "seed": seed,
            "train_fraction": train_fraction,
            "val_fraction": val_fraction,
        }
    _warn_skipped(ds_name, skipped, meta)
    names, source = _read_classnames_json(
        root / "classnames.json", classes, [spaced(c) for c in classes]
    )
    meta["classnames_source"] = source
    meta["folders"] = classes
    lists = {
        s: ImageList(root, tuple(p), tuple(y), tuple(names), f"{ds_name}/{s}")
        for s, (p, y) in raw.items()
    }
    return Dataset(ds_name, root, tuple(names), lists, "a photo of a {}.", meta)


def _is_intlike(v: object) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return True
    return isinstance(v, str) and v.strip().lstrip("-").isdigit()


def _read_manifest_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    rows: list[tuple[int, dict[str, Any]]] = []
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetError(f"{path}:{lineno}: not valid JSON ({e})") from None
            if not isinstance(obj, dict):
                raise DatasetError(f"{path}:{lineno}: expected an object with 'path' and 'label'")
            rows.append((lineno, obj))
    elif suffix in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            fields = [c.strip() for c in (reader.fieldnames or [])]
            if "path" not in fields or "label" not in fields:
                raise DatasetError(
                    f"{path}: the header must name columns 'path' and 'label' (optional 'split'); "
                    f"found {fields}"
                )
            for lineno, row in enumerate(reader, 2):
                rows.append((lineno, {k.strip(): v for k, v in row.items() if k is not None}))
    else:
        raise DatasetError(f"{path}: a manifest must end in .csv, .tsv or .jsonl")
    if not rows:
        raise DatasetError(f"{path}: the manifest lists no images")
    return rows


def load_manifest(
    path: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str] | None = None,
    seed: int = 0,
    train_fraction: float = 0.5,
    val_fraction: float = 0.2,
    verify_files: bool = True,
    name: str | None = None,
) -> Dataset:
    """Read a CSV (``path,label[,split]`` with a header) or JSONL (``{"path", "label"[, "split"]}``)
    manifest.

    Paths are relative to ``root`` (default: the manifest's folder) and must stay inside it.
    Labels are class names (``_`` → space for the prompt name) or integer class ids (sorted
    numerically); ``classnames.json`` in ``root`` overrides the names. ``split`` is
    ``train``/``val``/``test`` (``validation``, ``valid``, ``dev`` also accepted) on every row or on
    none; without it ``stratified_split`` is used. Every error names the manifest and line.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingDataError(f"manifest not found: {path}")
    base = Path(root).expanduser() if root is not None else path.parent
    ds_name = name or f"manifest:{path.stem}"
    rows = _read_manifest_rows(path)
    paths: list[str] = []
    raw_labels: list[Any] = []
    splits: list[str | None] = []
    for lineno, row in rows:
        where = f"{path}:{lineno}"
        if "path" not in row or "label" not in row:
            raise DatasetError(f"{where}: needs 'path' and 'label', found keys {sorted(row)}")
        paths.append(safe_relpath(row["path"], where=where))
        lab = row["label"]
        if lab is None or (isinstance(lab, str) and not lab.strip()) or isinstance(lab, bool):
            raise DatasetError(f"{where}: empty or invalid label {lab!r}")
        if not isinstance(lab, (str, int)):
            raise DatasetError(f"{where}: label must be a string or an int, found {lab!r}")
        raw_labels.append(lab.strip() if isinstance(lab, str) else lab)
        sp = row.get("split")
        if sp is None or (isinstance(sp, str) and not sp.strip()):
            splits.append(None)
        else:
            key = _SPLIT_NAMES.get(str(sp).strip().lower())
            if key is None:
                raise DatasetError(f"{where}: unknown split {sp!r} (expected train, val or test)")
            splits.append(key)
    given = [s is not None for s in splits]
    if any(given) and not all(given):
        first = rows[given.index(False)][0]
        raise DatasetError(
            f"{path}:{first}: no split given while other rows have one; give a split on every "
            "row or on none"
        )
    if all(_is_intlike(v) for v in raw_labels):
        values = sorted({int(v) for v in raw_labels})
        keys = [str(v) for v in values]
        key_of = [str(int(v)) for v in raw_labels]
    else:
        keys = sorted({str(v) for v in raw_labels})
        key_of = [str(v) for v in raw_labels]
    index = {k: i for i, k in enumerate(keys)}
    labels = [index[k] for k in key_of]
    names, source = _read_classnames_json(base / "classnames.json", keys, [spaced(k) for k in keys])

    if verify_files:
        missing = [
            f"line {rows[i][0]} {p!r}" for i, p in enumerate(paths) if not (base / p).is_file()
        ]
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise DatasetError(
                f"{path}: {len(missing)} listed images do not exist under {base}: {shown}"
            )
    meta: dict[str, Any] = {
        "source": "manifest",
        "manifest": str(path),
        "root": str(base),
        "classnames_source": source,
        "labels": keys,
    }
    if all(given) and splits:
        parts: dict[str, list[int]] = {s: [] for s in _SPLITS}
        for i, s in enumerate(splits):
            assert s is not None
            parts[s].append(i)
        meta["split"] = "column"
    else:
        parts = stratified_split(
            labels,
            seed=seed,
            train_fraction=train_fraction,
            val_fraction=val_fraction,
            where=str(path),
            classnames=names,
        )
        meta["split"] = {
            "kind": "stratified",
            "seed": seed,
            "train_fraction": train_fraction,
            "val_fraction": val_fraction,
        }
    present = {labels[i] for i in parts["train"]}
    empty = [repr(names[c]) for c in range(len(names)) if c not in present]
    if empty:
        raise DatasetError(
            f"{path}: classes without training images: {', '.join(empty[:5])}"
            + (" ..." if len(empty) > 5 else "")
        )
    lists = {
        s: ImageList(
            base,
            tuple(paths[i] for i in idx),
            tuple(labels[i] for i in idx),
            tuple(names),
            f"{ds_name}/{s}",
        )
        for s, idx in parts.items()
        if idx
    }
    return Dataset(ds_name, base, tuple(names), lists, "a photo of a {}.", meta)


def load_hf(
    source: Any,
    *,
    image_column: str = "image",
    label_column: str = "label",
    split_map: Mapping[str, str] | None = None,
    seed: int = 0,
    train_fraction: float = 0.5,
    val_fraction: float = 0.2,
    name: str | None = None,
) -> Dataset:
    """Read a Hugging Face image dataset (needs the ``datasets`` extra: ``pip install
    fewclip[datasets]``).

    Args:
        source: a ``datasets.DatasetDict``/``Dataset``, or a name/path given to
            ``datasets.load_dataset`` (offline: a local folder or an already cached dataset).
        image_column, label_column: the columns holding the image and the class label.
        split_map: HF split → ``train``/``val``/``test``; default maps ``train``,
            ``validation``/``valid``/``val``, ``test``. Unmapped HF splits are an error (named).
            With only a train split, ``stratified_split`` makes val and test.

    Class names come from the label column's ``ClassLabel`` names (``_`` → space) or the sorted
    label values. Images are decoded on demand by ``ImageList.open``; item keys are
    ``"<hf split>/<row>"``.
    """
    try:
        import datasets as hfds
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise MissingExtraError(
            "load_hf needs the optional 'datasets' package: pip install 'fewclip[datasets]'"
        ) from e
    ds_name = name or f"hf:{source if isinstance(source, str) else 'dataset'}"
    if isinstance(source, (str, os.PathLike)):
        src = os.fspath(source)
        obj = (
            hfds.load_dataset(src)
            if not os.path.isdir(src)
            else hfds.load_dataset("imagefolder", data_dir=src)
        )
    else:
        obj = source
    if isinstance(obj, hfds.Dataset):
        obj = hfds.DatasetDict({"train": obj})
    mapping = (
        dict(split_map)
        if split_map is not None
        else {k: _SPLIT_NAMES[k] for k in obj if k in _SPLIT_NAMES}
    )
    unmapped = [k for k in obj if k not in mapping]
    if unmapped:
        raise DatasetError(
            f"{ds_name}: splits {unmapped} are not mapped to train/val/test; pass split_map"
        )
    if "train" not in mapping.values():
        raise DatasetError(f"{ds_name}: no split maps to 'train' (splits: {list(obj)})")
    first = obj[next(iter(obj))]
    for col in (image_column, label_column):
        if col not in first.column_names:
            raise DatasetError(f"{ds_name}: no column {col!r}; columns: {first.column_names}")
    feat = first.features[label_column]
    if hasattr(feat, "names") and feat.names:
        keys = list(feat.names)
        names = [spaced(k) for k in keys]

        def to_id(v: Any) -> int:
            return int(v)
    else:
        values = sorted({v for split in obj for v in obj[split][label_column]}, key=str)
        keys = [str(v) for v in values]
        names = [spaced(k) for k in keys]
        lookup = {str(v): i for i, v in enumerate(values)}

        def to_id(v: Any) -> int:
            return lookup[str(v)]

    def loader(key: str) -> Any:
        split, row = key.rsplit("/", 1)
        img = obj[split][int(row)][image_column]
        return img

    raw: dict[str, tuple[list[str], list[int]]] = {s: ([], []) for s in _SPLITS}
    for hf_split, ours in mapping.items():
        labels = [to_id(v) for v in obj[hf_split][label_column]]
        raw[ours][0].extend(f"{hf_split}/{r}" for r in range(len(labels)))
        raw[ours][1].extend(labels)
    meta: dict[str, Any] = {"source": "huggingface", "splits": mapping}
    if set(mapping.values()) == {"train"}:
        p, y = raw["train"]
        parts = stratified_split(
            y,
            seed=seed,
            train_fraction=train_fraction,
            val_fraction=val_fraction,
            where=ds_name,
            classnames=names,
        )
        raw = {s: ([p[i] for i in idx], [y[i] for i in idx]) for s, idx in parts.items()}
        meta["split"] = {"kind": "stratified", "seed": seed}
    lists = {
        s: ImageList(Path("."), tuple(p), tuple(y), tuple(names), f"{ds_name}/{s}", loader)
        for s, (p, y) in raw.items()
        if p
    }
    return Dataset(ds_name, Path("."), tuple(names), lists, "a photo of a {}.", meta)
