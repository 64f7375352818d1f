"""Output folders that never lose a user's files.

The rules, shared by every writer (``Method.save``, ``Adapter.save``, the ``fit``, ``bench`` and
``demo`` commands):

- a folder that does not exist, or is empty, is written;
- a non-empty folder that fewclip did not write is refused, whatever the flags;
- a folder that fewclip wrote is replaced only with ``overwrite=True`` (CLI ``--overwrite``), and
  only when it holds nothing but fewclip's own files; the new content is written to a hidden
  sibling folder and renamed into place, so a reader sees the old folder or the complete new
  one, and the old files are then removed one by one by name (never a recursive delete);
- an output folder inside the input data is refused (:func:`check_outside`).

This module touches only the file system; it knows neither images nor methods.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import sys
import uuid
import warnings
from collections.abc import Callable, Collection, Iterable
from pathlib import Path

from fewclip._io import file_mode
from fewclip.errors import OutputFolderError

__all__ = [
    "OUTPUT_MARKER",
    "check_folder",
    "check_outside",
    "claim_folder",
    "describe_entries",
    "write_folder",
]

#: The file that marks a folder of results (``bench``, ``demo``, ``reproduce``) as fewclip's.
OUTPUT_MARKER = ".fewclip-output.json"


def describe_entries(folder: Path, names: Iterable[str], *, limit: int = 5) -> str:
    """``"a.jpg, sub/ and 3 more"``: a short listing of some entries of ``folder``."""
    names = sorted(names)
    shown = [n + ("/" if (folder / n).is_dir() else "") for n in names[:limit]]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(shown) + more


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
    except ValueError:
        return False
    return True


def check_outside(out: str | os.PathLike[str], inputs: Iterable[Path], *, what: str) -> None:
    """Refuse ``out`` when it is one of the folders ``inputs`` or lies inside one.

    ``what`` names the output in the message (e.g. ``"--out"``). Writing there would mix
    fewclip's files into the user's data (a new folder under an image-folder dataset becomes a
    class the next time it is read).
    """
    target = Path(out).expanduser().resolve()
    for folder in inputs:
        src = Path(folder).expanduser().resolve()
        if _is_within(target, src):
            raise OutputFolderError(
                f"{what}: {out} is inside the input data {src}; fewclip does not write into a "
                "dataset. Choose an output folder outside it (e.g. a sibling folder)."
            )


def claim_folder(target: str | os.PathLike[str], kind: str, own: Collection[str]) -> Path:
    """Make ``target`` a results folder of ``kind`` (``"bench"``, ``"demo"`` ...) or refuse.

    A missing or empty folder is created and marked with :data:`OUTPUT_MARKER`; a folder
    marked for the same ``kind`` is reused (runs resume there); an unmarked folder holding only
    names that such a run writes (``own``: file names or ``fnmatch`` patterns, e.g. a folder
    from an older fewclip) is marked and reused. Anything else is refused with
    :class:`~fewclip.errors.OutputFolderError`, and nothing is written.
    """
    import fnmatch
    import json

    path = Path(target)
    if path.exists() and not path.is_dir():
        raise OutputFolderError(f"{path}: expected a folder for the {kind} results, found a file")
    marker = path / OUTPUT_MARKER
    if marker.is_file():
        try:
            found = json.loads(marker.read_text()).get("kind")
        except (OSError, ValueError, AttributeError):
            found = None
        if isinstance(found, str):
            if found != kind:
                raise OutputFolderError(
                    f"{path}: holds fewclip {found} results, not {kind} results; "
                    "choose another folder (CLI: --out/-o)"
                )
            return path
        warnings.warn(
            f"{marker}: damaged (unreadable); the folder is checked as an unmarked one and "
            "marked again if it holds only files of a fewclip run",
            RuntimeWarning,
            stacklevel=2,
        )
    entries = [e.name for e in path.iterdir() if e.name != OUTPUT_MARKER] if path.is_dir() else []
    foreign = [n for n in entries if not any(fnmatch.fnmatchcase(n, pat) for pat in own)]
    if foreign:
        raise OutputFolderError(
            f"{path}: the folder holds files that a fewclip {kind} run did not write "
            f"({describe_entries(path, foreign)}); fewclip never writes into a folder of yours. "
            "Choose a new or empty folder (CLI: --out/-o)."
        )
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / f".{OUTPUT_MARKER}.{uuid.uuid4().hex[:8]}"
    tmp.write_text(json.dumps({"kind": kind, "format": "fewclip-output/1"}) + "\n")
    os.replace(tmp, marker)
    return path


def check_folder(
    target: str | os.PathLike[str],
    *,
    own_files: Collection[str],
    owner: Callable[[Path], str | None],
    overwrite: bool = False,
    what: str = "output folder",
) -> str | None:
    """What :func:`write_folder` would replace in ``target`` (``None``: nothing), or the
    :class:`~fewclip.errors.OutputFolderError` it would raise; writes nothing.

    Commands call it before long work, so that a refused output folder costs no time.
    """
    path = Path(target)
    if not (path.exists() or path.is_symlink()):
        return None
    if not path.is_dir():
        raise OutputFolderError(f"{path}: expected a folder to write the {what} in, found a file")
    entries = [e.name for e in path.iterdir()]
    if not entries:
        return None
    replaced = owner(path)
    if replaced is None:
        raise OutputFolderError(
            f"{path}: the folder is not empty ({describe_entries(path, entries)}) and does not "
            f"hold {_article(what)} {what} written by fewclip; fewclip never writes into a folder "
            "of yours. "
            "Choose a new or empty folder (CLI: --out/-o)."
        )
    foreign = [n for n in entries if n not in own_files]
    if foreign:
        raise OutputFolderError(
            f"{path}: holds {replaced}, but also files fewclip did not write "
            f"({describe_entries(path, foreign)}); move them out, or choose another folder "
            "(CLI: --out/-o)"
        )
    if not overwrite:
        raise OutputFolderError(
            f"{path}: already holds {replaced}; pass --overwrite to replace it "
            "(Python: overwrite=True), or choose another folder (CLI: --out/-o)"
        )
    return replaced


def _article(noun: str) -> str:
    return "an" if noun[:1].lower() in "aeiou" else "a"


def write_folder(
    target: str | os.PathLike[str],
    write: Callable[[Path], None],
    *,
    own_files: Collection[str],
    owner: Callable[[Path], str | None],
    overwrite: bool = False,
    what: str = "output folder",
) -> str | None:
    """Write a folder atomically without touching anything fewclip did not write.

    ``write(tmp)`` creates the new content in an empty temporary folder. ``owner(folder)`` says
    what an existing folder holds when fewclip wrote it (e.g. ``"a tip-adapter adapter"``) and
    ``None`` otherwise; ``own_files`` are the only names fewclip may replace or remove. Returns
    the description of the folder that was replaced, or ``None`` when there was none.

    Raises :class:`~fewclip.errors.OutputFolderError` (nothing written) for a path that is a
    file, a non-empty folder fewclip did not write, fewclip's folder holding other files too, or
    fewclip's folder without ``overwrite`` (:func:`check_folder`).
    """
    path = Path(os.path.abspath(target))  # "." and "sub/.." have a name to put a sibling by
    replaced = check_folder(path, own_files=own_files, owner=owner, overwrite=overwrite, what=what)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_siblings(path, own_files)
    tmp = _sibling(path, "tmp")
    try:
        write(tmp)
        _umask_modes(tmp)
        if _is_cwd(path):
            # the folder the user stands in keeps its inode (a rename would leave their shell
            # in a deleted folder): the files move in one by one, the old ones aside first
            old = _sibling(path, "old")
            for name in sorted(set(os.listdir(path)) & set(own_files)):
                os.replace(path / name, old / name)
            for name in sorted(os.listdir(tmp)):
                os.replace(tmp / name, path / name)
            _remove_own(old, own_files)
        elif replaced is None:
            try:
                os.replace(tmp, path)  # rename(2) onto a missing or empty folder
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                raise OutputFolderError(
                    f"{path}: something was written there while this {what} was being "
                    "written (another fewclip run?); nothing was replaced. Run again with "
                    "--overwrite (Python: overwrite=True) to replace it, or choose another folder"
                ) from None
        else:
            # re-check just before the swap: something may have appeared while we wrote
            check_folder(path, own_files=own_files, owner=owner, overwrite=True, what=what)
            if _exchange(tmp, path):  # one atomic step: `tmp` now holds the old files
                _remove_own(tmp, own_files)
            else:  # no renameat2: two renames, the old folder aside in between
                old = _sibling(path, "old")
                os.replace(path, old)  # `old` is empty, so the rename takes its place
                os.replace(tmp, path)
                _remove_own(old, own_files)
    finally:
        if tmp.exists():
            _remove_own(tmp, os.listdir(tmp))
    return replaced


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False
    where the system cannot (another OS, an old C library or file system) or the call
    failed, with nothing changed."""
    if sys.platform != "linux":
        return False
    import ctypes

    libc = ctypes.CDLL(None)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    # any failure (no support here, or a real error) falls back to the two renames, which
    # raise the system's own error if there is one
    return bool(fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0)


def _remove_stale_siblings(path: Path, own_files: Collection[str]) -> None:
    """Remove the hidden ``.NAME.tmp-PID-*`` / ``.NAME.old-PID-*`` folders that a killed write
    left beside ``path``: only those whose process is gone (a running writer keeps its own),
    and only fewclip's own files in them (anything else keeps the folder)."""
    for tag in ("tmp", "old"):
        for stale in path.parent.glob(f".{glob.escape(path.name)}.{tag}-*"):
            pid = stale.name.rsplit(f".{tag}-", 1)[-1].split("-", 1)[0]
            if not pid.isdigit() or _alive(int(pid)):
                continue
            if stale.is_dir() and not stale.is_symlink():
                _remove_own(stale, [n for n in os.listdir(stale) if n in own_files])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _is_cwd(path: Path) -> bool:
    try:
        return path.is_dir() and os.path.samefile(path, os.getcwd())
    except OSError:  # the working directory was removed
        return False


def _sibling(path: Path, tag: str) -> Path:
    """A new empty hidden folder next to ``path`` (created with the user's umask, unlike
    ``tempfile.mkdtemp``'s private 0700)."""
    while True:
        candidate = path.with_name(f".{path.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:12]}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate


def _umask_modes(folder: Path) -> None:
    """Give the files of ``folder`` the user's usual permissions (some writers, safetensors
    among them, create files readable by their owner only)."""
    mode = file_mode()
    for p in folder.iterdir():
        if p.is_file() and not p.is_symlink():
            p.chmod(mode)


def _remove_own(folder: Path, names: Iterable[str]) -> None:
    """Remove the files ``names`` of ``folder``, then the folder if that left it empty."""
    for name in names:
        p = folder / name
        if p.is_file() or p.is_symlink():
            p.unlink()
    with contextlib.suppress(OSError):  # something else appeared in it: leave it for the user
        folder.rmdir()
