"""Readers for CoOp's ``$DATA`` layout: split JSON files, FGVC text files, ImageNet folders.

Every reader validates what it reads and names the file and entry in its errors: missing files
or folders (with the expected layout and where split files come from), malformed entries, paths
that leave the dataset root, labels that disagree with class names, classes without training
images, and listed images that do not exist. Files that are not images are counted, reported in
``Dataset.meta["skipped"]`` and warned about, never dropped silently.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from fewclip.data.benchmarks._imagenet import (
    IMAGENET_A_WNIDS,
    IMAGENET_CLASSNAMES,
    IMAGENET_R_WNIDS,
    IMAGENET_WNIDS,
)
from fewclip.data.benchmarks.specs import SPLIT_SOURCE, BenchmarkSpec, get_spec
from fewclip.data.types import (
    IMAGE_EXTENSIONS,
    Dataset,
    DatasetError,
    ImageList,
    MissingDataError,
    safe_relpath,
)

__all__ = [
    "list_images",
    "load_benchmark",
    "read_coop_split",
    "read_wnid_classnames",
]

_SPLITS = ("train", "val", "test")
_WNID_INDEX = {w: i for i, w in enumerate(IMAGENET_WNIDS)}
_SUBSETS = {"imagenet-a": IMAGENET_A_WNIDS, "imagenet-r": IMAGENET_R_WNIDS}
_TOP_LEVEL_IGNORED = frozenset({"README.txt", "readme.txt", "LICENSE", "LICENSE.txt"})


def _missing(spec: BenchmarkSpec | None, what: str, path: Path) -> MissingDataError:
    head = f"{spec.name}: " if spec else ""
    msg = f"{head}{what} not found: {path}"
    if spec is not None:
        msg += f"\nExpected layout:\n{spec.expected_layout()}\n{SPLIT_SOURCE}"
    return MissingDataError(msg)


def _preview(items: list[str], n: int = 5) -> str:
    shown = ", ".join(items[:n])
    return shown + (f" ... ({len(items) - n} more)" if len(items) > n else "")


def list_images(folder: Path) -> tuple[list[str], list[str]]:
    """Image file names in ``folder`` (sorted) and the non-image, non-hidden entries skipped."""
    images: list[str] = []
    skipped: list[str] = []
    with os.scandir(folder) as it:
        for entry in it:
            if entry.name.startswith("."):
                continue
            if entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                images.append(entry.name)
            else:
                skipped.append(entry.name)
    images.sort()
    skipped.sort()
    return images, skipped


def _note_skipped(name: str, skipped: list[str], meta: dict[str, Any]) -> None:
    if skipped:
        meta["skipped"] = {"count": len(skipped), "examples": skipped[:10]}
        warnings.warn(
            f"{name}: skipped {len(skipped)} entries that are not images: {_preview(skipped)}",
            stacklevel=3,
        )


def read_coop_split(
    path: str | os.PathLike[str],
    image_dir: str | os.PathLike[str],
    *,
    name: str = "dataset",
    verify_files: bool = True,
    spec: BenchmarkSpec | None = None,
) -> tuple[tuple[str, ...], dict[str, ImageList]]:
    """Read a CoOp ``split_zhou_*.json`` file.

    Format: ``{"train": [[relpath, label, classname], ...], "val": [...], "test": [...]}`` with
    paths relative to ``image_dir``. Returns the class names in label order and one ``ImageList``
    per split, in file order.

    Raises ``DatasetError`` naming the file and entry for: invalid JSON, a missing split, an entry
    that is not ``[path, int label, classname]``, an absolute path or a ``..`` component, a label
    whose class name differs between entries (or a class name with two labels), labels that are not
    ``0..C-1``, a class without training images, and (``verify_files``) listed images that do not
    exist.
    """
    path = Path(path)
    image_dir = Path(image_dir)
    if not path.is_file():
        raise _missing(spec, "split file", path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: not a valid JSON split file ({e})") from None
    if not isinstance(data, dict):
        raise DatasetError(
            f"{path}: expected an object with keys 'train', 'val', 'test', "
            f"found {type(data).__name__}"
        )
    absent = [s for s in _SPLITS if s not in data]
    if absent:
        raise DatasetError(f"{path}: missing split(s) {absent}; found keys {sorted(data)}")

    label_name: dict[int, tuple[str, str]] = {}
    name_label: dict[str, tuple[int, str]] = {}
    raw: dict[str, tuple[list[str], list[int]]] = {}
    for split in _SPLITS:
        entries = data[split]
        if not isinstance(entries, list):
            raise DatasetError(f"{path}: '{split}' must be a list, found {type(entries).__name__}")
        paths: list[str] = []
        labels: list[int] = []
        for i, entry in enumerate(entries):
            where = f"{path} entry {split}[{i}]"
            if not isinstance(entry, (list, tuple)) or len(entry) != 3:
                raise DatasetError(f"{where}: expected [path, label, classname], found {entry!r}")
            rel, y, cname = entry
            rel = safe_relpath(rel, where=where)
            if isinstance(y, bool) or not isinstance(y, int) or y < 0:
                raise DatasetError(f"{where}: label must be a non-negative int, found {y!r}")
            if not isinstance(cname, str) or not cname.strip():
                raise DatasetError(
                    f"{where}: class name must be a non-empty string, found {cname!r}"
                )
            prev = label_name.get(y)
            if prev is None:
                label_name[y] = (cname, where)
            elif prev[0] != cname:
                raise DatasetError(
                    f"{where}: label {y} is named {cname!r} here but {prev[0]!r} at {prev[1]}; "
                    "labels and class names disagree"
                )
            prev_l = name_label.get(cname)
            if prev_l is None:
                name_label[cname] = (y, where)
            elif prev_l[0] != y:
                raise DatasetError(
                    f"{where}: class {cname!r} has label {y} here but {prev_l[0]} at {prev_l[1]}; "
                    "labels and class names disagree"
                )
            paths.append(rel)
            labels.append(y)
        raw[split] = (paths, labels)

    if not label_name:
        raise DatasetError(f"{path}: the split file lists no images")
    n_classes = max(label_name) + 1
    gaps = [y for y in range(n_classes) if y not in label_name]
    if gaps:
        raise DatasetError(
            f"{path}: labels must be 0..{n_classes - 1} without gaps; labels "
            f"{_preview([str(g) for g in gaps])} never appear"
        )
    classnames = tuple(label_name[y][0] for y in range(n_classes))
    train_labels = set(raw["train"][1])
    empty = [f"{y} ({classnames[y]!r})" for y in range(n_classes) if y not in train_labels]
    if empty:
        raise DatasetError(f"{path}: classes without training images: {_preview(empty)}")

    lists = {
        split: ImageList(image_dir, tuple(p), tuple(y), classnames, f"{name}/{split}")
        for split, (p, y) in raw.items()
    }
    if verify_files:
        if not image_dir.is_dir():
            raise _missing(spec, "image folder", image_dir)
        missing = [
            f"{split}[{i}] {lst.paths[i]!r}"
            for split, lst in lists.items()
            for i in lst.missing_files()
        ]
        if missing:
            raise DatasetError(
                f"{path}: {len(missing)} listed images do not exist under {image_dir}: "
                f"{_preview(missing)}"
            )
    return classnames, lists


def read_wnid_classnames(path: Path) -> dict[str, str]:
    """CoOp's ``classnames.txt``: ``<wnid> <class name>`` per line, in file order."""
    out: dict[str, str] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().split(" ")
        if len(parts) < 2 or not parts[1]:
            raise DatasetError(f"{path}:{lineno}: expected '<wnid> <class name>', found {line!r}")
        if parts[0] in out:
            raise DatasetError(f"{path}:{lineno}: wnid {parts[0]!r} listed twice")
        out[parts[0]] = " ".join(parts[1:])
    if not out:
        raise DatasetError(f"{path}: no classes listed")
    return out


def _class_dirs(folder: Path, meta: dict[str, Any], name: str) -> list[str]:
    dirs: list[str] = []
    others: list[str] = []
    with os.scandir(folder) as it:
        for entry in it:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                dirs.append(entry.name)
            elif entry.name not in _TOP_LEVEL_IGNORED:
                others.append(entry.name)
    _note_skipped(name, sorted(others), meta)
    if not dirs:
        raise DatasetError(f"{name}: no class folders in {folder}")
    return sorted(dirs)


def _read_folders(
    image_dir: Path, folders: list[str], labels: list[int], name: str, meta: dict[str, Any]
) -> tuple[tuple[str, ...], tuple[int, ...]]:
    paths: list[str] = []
    ys: list[int] = []
    skipped: list[str] = []
    for folder, y in zip(folders, labels, strict=True):
        images, skip = list_images(image_dir / folder)
        if not images:
            raise DatasetError(f"{name}: class folder {image_dir / folder} holds no images")
        paths.extend(f"{folder}/{f}" for f in images)
        ys.extend([y] * len(images))
        skipped.extend(f"{folder}/{s}" for s in skip)
    if skipped:
        prev = meta.get("skipped", {"count": 0, "examples": []})
        meta["skipped"] = {
            "count": prev["count"] + len(skipped),
            "examples": (prev["examples"] + skipped)[:10],
        }
        warnings.warn(
            f"{name}: skipped {len(skipped)} entries that are not images: {_preview(skipped)}",
            stacklevel=3,
        )
    return tuple(paths), tuple(ys)


def _wnid_names(
    wnids: list[str], spec: BenchmarkSpec, ddir: Path, where: Path
) -> tuple[list[str], str]:
    txt = ddir / "classnames.txt"
    if txt.is_file():
        table = read_wnid_classnames(txt)
        unknown = [w for w in wnids if w not in table]
        if unknown:
            raise DatasetError(f"{where}: folders {_preview(unknown)} are not listed in {txt}")
        return [table[w] for w in wnids], str(txt)
    unknown = [w for w in wnids if w not in _WNID_INDEX]
    if unknown:
        raise DatasetError(
            f"{spec.name}: folders {_preview(unknown)} in {where} are not ImageNet wnids "
            "(expected names like n01440764)"
        )
    return [IMAGENET_CLASSNAMES[_WNID_INDEX[w]] for w in wnids], "builtin"


def _imagenet_meta(wnids: list[str], source: str) -> dict[str, Any]:
    return {
        "wnids": wnids,
        "imagenet_index": [_WNID_INDEX.get(w, -1) for w in wnids],
        "classnames_source": source,
    }


def _read_imagenet(spec: BenchmarkSpec, ddir: Path) -> Dataset:
    image_dir = ddir / spec.image_dir
    train_dir, val_dir = image_dir / "train", image_dir / "val"
    for d in (train_dir, val_dir):
        if not d.is_dir():
            raise _missing(spec, "folder", d)
    meta: dict[str, Any] = {"benchmark": spec.name, "dataset_dir": str(ddir)}
    wnids = _class_dirs(train_dir, meta, spec.name)
    val_wnids = _class_dirs(val_dir, meta, spec.name)
    if val_wnids != wnids:
        only_t = sorted(set(wnids) - set(val_wnids))
        only_v = sorted(set(val_wnids) - set(wnids))
        raise DatasetError(
            f"{spec.name}: class folders of {train_dir} and {val_dir} differ "
            f"(only in train: {_preview(only_t) or '-'}; only in val: {_preview(only_v) or '-'})"
        )
    classnames, source = _wnid_names(wnids, spec, ddir, train_dir)
    meta.update(_imagenet_meta(wnids, source))
    labels = list(range(len(wnids)))
    splits = {}
    for split, folder in (("train", train_dir), ("test", val_dir)):
        p, y = _read_folders(folder, wnids, labels, f"{spec.name}/{split}", meta)
        splits[split] = ImageList(folder, p, y, tuple(classnames), f"{spec.name}/{split}")
    meta["test_folder"] = "images/val (ILSVRC-2012 val, the standard test set)"
    return Dataset(spec.name, ddir, tuple(classnames), splits, spec.template, meta)


def _read_imagenet_folders(spec: BenchmarkSpec, ddir: Path) -> Dataset:
    image_dir = ddir / spec.image_dir
    if not image_dir.is_dir():
        raise _missing(spec, "image folder", image_dir)
    meta: dict[str, Any] = {"benchmark": spec.name, "dataset_dir": str(ddir)}
    wnids = _class_dirs(image_dir, meta, spec.name)
    if spec.subset is not None:
        allowed = set(_SUBSETS[spec.subset])
        extra = [w for w in wnids if w not in allowed]
        if extra:
            raise DatasetError(
                f"{spec.name}: folders {_preview(extra)} in {image_dir} are not among the 200 "
                f"{spec.subset} classes"
            )
        meta["subset"] = spec.subset
        meta["missing_classes"] = sorted(allowed - set(wnids))
    classnames, source = _wnid_names(wnids, spec, ddir, image_dir)
    meta.update(_imagenet_meta(wnids, source))
    labels = list(range(len(wnids)))  # CoOp: enumerate the sorted folders that exist
    p, y = _read_folders(image_dir, wnids, labels, f"{spec.name}/test", meta)
    test = ImageList(image_dir, p, y, tuple(classnames), f"{spec.name}/test")
    return Dataset(spec.name, ddir, tuple(classnames), {"test": test}, spec.template, meta)


def _read_imagenet_v2(spec: BenchmarkSpec, ddir: Path) -> Dataset:
    image_dir = ddir / spec.image_dir
    if not image_dir.is_dir():
        raise _missing(spec, "image folder", image_dir)
    meta: dict[str, Any] = {"benchmark": spec.name, "dataset_dir": str(ddir)}
    folders = _class_dirs(image_dir, meta, spec.name)
    bad = [f for f in folders if not (f.isdigit() and 0 <= int(f) < 1000 and str(int(f)) == f)]
    if bad:
        raise DatasetError(
            f"{spec.name}: folders {_preview(bad)} in {image_dir} are not class ids 0..999"
        )
    txt = ddir / "classnames.txt"
    if txt.is_file():
        table = read_wnid_classnames(txt)
        if len(table) != 1000:
            raise DatasetError(
                f"{txt}: expected 1000 classes (folder i = line i), found {len(table)}"
            )
        wnids, classnames, source = list(table), list(table.values()), str(txt)
    else:
        wnids, classnames, source = list(IMAGENET_WNIDS), list(IMAGENET_CLASSNAMES), "builtin"
    meta.update(_imagenet_meta(wnids, source))
    ordered = sorted(folders, key=int)
    meta["missing_classes"] = sorted(set(range(1000)) - {int(f) for f in folders})
    p, y = _read_folders(image_dir, ordered, [int(f) for f in ordered], f"{spec.name}/test", meta)
    test = ImageList(image_dir, p, y, tuple(classnames), f"{spec.name}/test")
    return Dataset(spec.name, ddir, tuple(classnames), {"test": test}, spec.template, meta)


def _read_fgvc(spec: BenchmarkSpec, ddir: Path, verify_files: bool) -> Dataset:
    variants_file = ddir / "variants.txt"
    if not variants_file.is_file():
        raise _missing(spec, "file", variants_file)
    lines = variants_file.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    classnames: list[str] = []
    for lineno, line in enumerate(lines, 1):
        v = line.strip()
        if not v:
            raise DatasetError(f"{variants_file}:{lineno}: empty line (label = line index)")
        if v in classnames:
            raise DatasetError(f"{variants_file}:{lineno}: variant {v!r} listed twice")
        classnames.append(v)
    if not classnames:
        raise DatasetError(f"{variants_file}: no variants listed")
    index = {v: i for i, v in enumerate(classnames)}
    image_dir = ddir / spec.image_dir
    splits: dict[str, ImageList] = {}
    for split in _SPLITS:
        f = ddir / f"images_variant_{split}.txt"
        if not f.is_file():
            raise _missing(spec, "file", f)
        paths: list[str] = []
        labels: list[int] = []
        for lineno, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            parts = line.strip().split(" ")
            variant = " ".join(parts[1:])
            where = f"{f}:{lineno}"
            if len(parts) < 2 or variant not in index:
                raise DatasetError(
                    f"{where}: variant {variant!r} is not listed in {variants_file.name} "
                    f"(line {line!r})"
                )
            paths.append(safe_relpath(parts[0] + ".jpg", where=where))
            labels.append(index[variant])
        splits[split] = ImageList(
            image_dir, tuple(paths), tuple(labels), tuple(classnames), f"{spec.name}/{split}"
        )
    present = set(splits["train"].labels)
    empty = [f"{y} ({classnames[y]!r})" for y in range(len(classnames)) if y not in present]
    if empty:
        raise DatasetError(
            f"{ddir / 'images_variant_train.txt'}: classes without training images: "
            f"{_preview(empty)}"
        )
    if verify_files:
        if not image_dir.is_dir():
            raise _missing(spec, "image folder", image_dir)
        missing = [
            f"{split}[{i}] {lst.paths[i]!r}"
            for split, lst in splits.items()
            for i in lst.missing_files()
        ]
        if missing:
            raise DatasetError(
                f"{spec.name}: {len(missing)} images listed in images_variant_*.txt do not exist "
                f"under {image_dir}: {_preview(missing)}"
            )
    meta = {"benchmark": spec.name, "dataset_dir": str(ddir), "source": "images_variant_*.txt"}
    return Dataset(spec.name, ddir, tuple(classnames), splits, spec.template, meta)


def _dataset_dir(spec: BenchmarkSpec, root: Path) -> Path:
    ddir = root / spec.dataset_dir
    if ddir.is_dir():
        return ddir
    if root.name == spec.dataset_dir and root.is_dir():
        return root
    if not root.is_dir():
        raise _missing(spec, "data root ($DATA)", root)
    raise _missing(spec, "dataset folder", ddir)


def load_benchmark(
    name: str, root: str | os.PathLike[str], *, verify_files: bool = True
) -> Dataset:
    """Read benchmark ``name`` from CoOp's ``$DATA`` layout under ``root``.

    Args:
        name: a name from ``benchmark_names()`` or an alias (``"fgvc"``, ``"OxfordPets"``, ...).
        root: the ``$DATA`` folder holding ``caltech-101/``, ``oxford_pets/``, ... (the dataset
            folder itself is accepted too).
        verify_files: check that every image listed in a split file exists (folder layouts are
            listed from disk and always exist).

    Returns:
        A ``Dataset`` with splits ``train``/``val``/``test`` (ImageNet: ``train``/``test``, test
        being ILSVRC val; the ImageNet variants: ``test`` only). Class names are the references'
        prompt names. For the ImageNet family, ``meta["wnids"]`` and ``meta["imagenet_index"]``
        map each class to its ImageNet-1k class id (slice 1000-class logits with it for -A/-R).
    """
    spec = get_spec(name)
    ddir = _dataset_dir(spec, Path(root).expanduser())
    if spec.kind == "split-json":
        assert spec.split_file is not None
        image_dir = ddir / spec.image_dir if spec.image_dir else ddir
        split_path = ddir / spec.split_file
        classnames, splits = read_coop_split(
            split_path, image_dir, name=spec.name, verify_files=verify_files, spec=spec
        )
        meta = {"benchmark": spec.name, "dataset_dir": str(ddir), "source": spec.split_file}
        return Dataset(spec.name, ddir, classnames, splits, spec.template, meta)
    if spec.kind == "fgvc":
        return _read_fgvc(spec, ddir, verify_files)
    if spec.kind == "imagenet":
        return _read_imagenet(spec, ddir)
    if spec.kind == "imagenet-v2":
        return _read_imagenet_v2(spec, ddir)
    if spec.kind == "imagenet-folders":
        return _read_imagenet_folders(spec, ddir)
    raise AssertionError(f"unknown reader kind {spec.kind!r}")  # pragma: no cover
