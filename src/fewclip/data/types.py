"""The image-world records every reader returns: an ``ImageList`` per split and a ``Dataset``.

An ``ImageList`` is an ordered list of (path, label) pairs with the class names they refer to.
Its order is the order the few-shot draws index into, so every reader fixes it (split-file order
for CoOp split files, sorted folder and file names for folder layouts).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Any

from fewclip.errors import FewclipError, NotFoundError, OutOfRangeError

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "IMAGE_EXTENSIONS",
    "Dataset",
    "DatasetError",
    "ImageList",
    "MissingDataError",
    "safe_relpath",
    "spaced",
]

#: File extensions read as images by the folder readers (compared case-insensitively).
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)


class DatasetError(FewclipError, ValueError):
    """A dataset file or folder has content that fewclip cannot use (names the file/entry)."""


class MissingDataError(DatasetError, FileNotFoundError):
    """A file or folder a reader needs does not exist (names it and shows the expected layout)."""


def spaced(name: str) -> str:
    """A folder or label name as prompt text: ``_`` becomes a space (the references' rule)."""
    return name.replace("_", " ")


def safe_relpath(path: object, *, where: str) -> str:
    """Check that ``path`` is a relative path that stays inside its root; return it in POSIX form.

    Rejects non-strings, empty paths, absolute paths (POSIX ``/x``, Windows ``C:\\x`` or ``\\x``)
    and any ``..`` component. ``where`` names the file and entry for the error message.
    """
    if not isinstance(path, str):
        raise DatasetError(f"{where}: expected a relative path string, found {path!r}")
    if not path.strip():
        raise DatasetError(f"{where}: empty path")
    win = PureWindowsPath(path)
    posix = PurePosixPath(path.replace("\\", "/"))
    if posix.is_absolute() or win.is_absolute() or win.drive or path.startswith(("/", "\\")):
        raise DatasetError(
            f"{where}: path {path!r} is absolute; paths must be relative to the dataset root"
        )
    if ".." in posix.parts:
        raise DatasetError(f"{where}: path {path!r} escapes the dataset root ('..' component)")
    return posix.as_posix()


@dataclass(frozen=True, eq=False)
class ImageList:
    """The images of one split, in a fixed order.

    Attributes:
        root: the folder ``paths`` are relative to.
        paths: relative POSIX paths (or, for in-memory sources, stable item keys).
        labels: class id of each image, in ``[0, len(classnames))``.
        classnames: prompt names of all classes of the dataset, in class-id order (shared by
            every split, so a class with no image in this split still has its id).
        name: ``"<dataset>/<split>"``, used in messages and records.
        loader: optional ``key -> PIL image`` for sources that are not files (Hugging Face).
    """

    root: Path
    paths: tuple[str, ...]
    labels: tuple[int, ...]
    classnames: tuple[str, ...]
    name: str = ""
    loader: Callable[[str], Image.Image] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        object.__setattr__(self, "paths", tuple(self.paths))
        object.__setattr__(self, "labels", tuple(int(y) for y in self.labels))
        object.__setattr__(self, "classnames", tuple(self.classnames))
        if len(self.paths) != len(self.labels):
            raise DatasetError(
                f"{self.name or 'ImageList'}: {len(self.paths)} paths but {len(self.labels)} labels"
            )
        c = len(self.classnames)
        bad = [(i, y) for i, y in enumerate(self.labels) if not 0 <= y < c]
        if bad:
            i, y = bad[0]
            raise DatasetError(
                f"{self.name or 'ImageList'}: entry {i} ({self.paths[i]!r}) has label {y}, "
                f"outside [0, {c}) for {c} class names ({len(bad)} such entries)"
            )

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def n_classes(self) -> int:
        return len(self.classnames)

    def abspath(self, i: int) -> Path:
        """Absolute path of image ``i``."""
        return self.root / self.paths[i]

    def abspaths(self) -> list[Path]:
        return [self.root / p for p in self.paths]

    def open(self, i: int) -> Image.Image:
        """Image ``i`` as an RGB PIL image."""
        if self.loader is not None:
            img = self.loader(self.paths[i])
        else:
            from PIL import Image as _Image

            with _Image.open(self.abspath(i)) as f:
                img = f.copy()
        return img.convert("RGB")

    def subset(self, index: Iterable[int], *, name: str | None = None) -> ImageList:
        """The entries ``index`` (in that order, repeats allowed)."""
        idx = [int(i) for i in index]
        n = len(self)
        bad = [i for i in idx if not 0 <= i < n]
        if bad:
            raise OutOfRangeError(f"{self.name}: indices {bad[:5]} out of range for {n} images")
        return ImageList(
            self.root,
            tuple(self.paths[i] for i in idx),
            tuple(self.labels[i] for i in idx),
            self.classnames,
            self.name if name is None else name,
            self.loader,
        )

    def class_counts(self) -> list[int]:
        """Number of images per class id."""
        counts = [0] * len(self.classnames)
        for y in self.labels:
            counts[y] += 1
        return counts

    def fingerprint(self) -> str:
        """SHA-256 over root-relative paths, labels and class names (for cache keys)."""
        h = hashlib.sha256()
        h.update(json.dumps(list(self.classnames), ensure_ascii=False).encode())
        for p, y in zip(self.paths, self.labels, strict=True):
            h.update(f"\n{y}\t{p}".encode())
        return h.hexdigest()

    def missing_files(self) -> list[int]:
        """Indices whose file does not exist (always empty for in-memory sources)."""
        if self.loader is not None:
            return []
        return [i for i, p in enumerate(self.paths) if not os.path.isfile(self.root / p)]


@dataclass(frozen=True, eq=False)
class Dataset:
    """A dataset: class names, its splits and the prompt template the references use.

    Attributes:
        name: canonical dataset name (``"caltech101"``, ``"folder:pets"`` ...).
        root: the dataset folder.
        classnames: prompt names in class-id order (duplicates allowed, as in ImageNet).
        splits: ``"train"``/``"val"``/``"test"`` → ``ImageList`` (only the splits that exist).
        template: the single prompt template (``"a photo of a {}."`` unless the dataset has its
            own, see ``fewclip.data.prompts``).
        meta: JSON-able facts about the source (split file, wnids, skipped files, ...).
    """

    name: str
    root: Path
    classnames: tuple[str, ...]
    splits: Mapping[str, ImageList]
    template: str = "a photo of a {}."
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        object.__setattr__(self, "classnames", tuple(self.classnames))
        object.__setattr__(self, "splits", dict(self.splits))
        if not self.classnames:
            raise DatasetError(f"{self.name}: no classes found under {self.root}")
        for key, lst in self.splits.items():
            if lst.classnames != self.classnames:
                raise DatasetError(f"{self.name}: split {key!r} has different class names")

    @property
    def n_classes(self) -> int:
        return len(self.classnames)

    def has_split(self, split: str) -> bool:
        return split in self.splits

    def split(self, split: str) -> ImageList:
        """The ``ImageList`` of ``split``; a clear ``KeyError`` when the dataset lacks it."""
        try:
            return self.splits[split]
        except KeyError:
            have = ", ".join(sorted(self.splits)) or "none"
            raise NotFoundError(
                f"{self.name}: no {split!r} split (available: {have}). "
                + _NO_SPLIT_HINT.get(split, "")
            ) from None

    @property
    def train(self) -> ImageList:
        return self.split("train")

    @property
    def val(self) -> ImageList:
        return self.split("val")

    @property
    def test(self) -> ImageList:
        return self.split("test")

    def input_folders(self) -> list[Path]:
        """The folders this dataset reads from, which no output may be written into.

        For an image-folder dataset, its root (a new folder there would become a class); for
        every other file-based source, the deepest folder holding all of a split's images.
        In-memory sources (Hugging Face) have none.
        """
        folders: list[Path] = []
        if self.name.startswith("folder:"):
            folders.append(self.root)
        for lst in self.splits.values():
            if lst.loader is not None or not lst.paths:
                continue
            parents = {p.rpartition("/")[0] for p in lst.paths}
            folders.append(Path(os.path.commonpath([str(lst.root / d) for d in parents])))
        return folders

    def summary(self) -> dict[str, Any]:
        """Counts per split and class, JSON-able; ``root`` absolute, so that a record (e.g. an
        adapter's) still finds the data from another working directory."""
        return {
            "name": self.name,
            "root": str(self.root.expanduser().resolve()),
            "n_classes": self.n_classes,
            "splits": {k: len(v) for k, v in self.splits.items()},
        }


_NO_SPLIT_HINT = {
    "val": "Use the 'fewshot-val' protocol (validation drawn from train) or 'val-free'.",
    "train": "This dataset is test-only (evaluate a model fitted on another dataset).",
}
