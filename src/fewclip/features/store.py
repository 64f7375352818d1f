"""A content-addressed feature store on disk: safetensors shards plus a JSON record.

Layout::

    <root>/
      entries/<key[:2]>/<key>/
        record.json                 # written last: the key record, shard list, bad files
        shards/00000.safetensors    # rows [0, shard_size), tensor "features" (rows, D)
        shards/00001.safetensors    # ...
      locks/<key>.lock              # advisory lock held while an entry is being written

An entry holds one (N, D) tensor: the raw features of one view (plain or one augmented view) of
one split of one dataset under one backbone, or the raw prompt embeddings of a set of prompts.
Its key is the SHA-256 of a JSON *key record* listing everything that changes the content
(backbone id, preprocessing, view and augmentation, dataset fingerprint, split, dtype,
precision, fewclip version); ``record.json`` stores that record so entries can be listed and
inspected without loading any tensor.

Guarantees:

- every file is written to a temporary name and renamed into place (``os.replace``);
- each shard carries its key, row range and two checksums of its data (xxHash3-64, fast, and
  SHA-256) in the safetensors header and in ``record.json``, so an interrupted extraction
  resumes from the finished shards and a truncated or corrupt shard is detected (and rebuilt by
  :func:`fewclip.features.extract`);
- every read checks the data against its xxHash3 checksum (:meth:`FeatureStore.load`; a
  mismatch raises :class:`CorruptEntryError` naming the entry and ``fewclip cache rm KEY``).
  A file verified once is not hashed again by the same process while its inode, size and
  modification time stay the same (the store never rewrites a file in place);
- writers take an exclusive lock per entry (``fcntl.flock``; released by the OS if the process
  dies), so two processes extracting the same entry end with one valid entry;
- reading an entry touches only its own files, and shards can be memory-mapped.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xxhash
from torch import Tensor

from fewclip._io import atomic_write
from fewclip._version import __version__
from fewclip.backbones.base import fingerprint
from fewclip.errors import FewclipError, InvalidValueError, NotFoundError, OutOfRangeError
from fewclip.imageio import BadImage

try:  # POSIX advisory locks; elsewhere writes stay atomic but are not serialised.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "STORE_FORMAT",
    "CorruptEntryError",
    "EntryInfo",
    "EntryWriter",
    "FeatureStore",
    "Leftover",
    "entry_key",
]

STORE_FORMAT = 1
_TENSOR = "features"
_DTYPES: dict[str, torch.dtype] = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F64": torch.float64,
}
_ST_NAME = {v: k for k, v in _DTYPES.items()}
_NP = {"F32": np.float32, "F16": np.float16, "BF16": np.int16, "F64": np.float64}


class CorruptEntryError(FewclipError, RuntimeError):
    """A stored entry is incomplete, truncated or corrupt. Running the extraction again
    rebuilds the damaged shards."""


def entry_key(record: dict[str, Any]) -> str:
    """The store key of a key record: 32 hex characters of its canonical SHA-256."""
    return fingerprint(record)[:32]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, data)


def _safetensors_bytes(data: Tensor, metadata: dict[str, str]) -> bytes:
    """``data`` (2-D, contiguous) as a safetensors file holding one tensor named ``features``,
    byte for byte the same for the same data and metadata in any process (the safetensors
    library writes metadata in hash-map order, which varies from one process to the next).

    The layout is the format's: an 8-byte little-endian header length, the JSON header
    (metadata keys sorted, padded with spaces to a multiple of 8 bytes), then the raw
    little-endian data.
    """
    st_dtype = _ST_NAME[data.dtype]
    raw = data.contiguous().view(torch.int16) if data.dtype == torch.bfloat16 else data
    arr = raw.numpy()
    blob = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
    header = {
        "__metadata__": dict(sorted(metadata.items())),
        _TENSOR: {"dtype": st_dtype, "shape": list(data.shape), "data_offsets": [0, len(blob)]},
    }
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + blob


def _read_header(path: Path) -> tuple[dict[str, Any], int]:
    """Parse a safetensors header; returns (header dict, data offset). Raises ValueError."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise InvalidValueError("file shorter than the 8-byte safetensors header length")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, 100_000_000):
            raise InvalidValueError(f"header length {n} exceeds the file size {size}")
        header = json.loads(f.read(n))
    if not isinstance(header, dict):
        raise InvalidValueError("header is not a JSON object")
    return header, 8 + n


def _data_bytes(t: Tensor) -> memoryview:
    data = t.detach().contiguous()
    if data.dtype == torch.bfloat16:
        data = data.view(torch.int16)
    return data.numpy().reshape(-1).view(np.uint8).data


def _data_sha256(t: Tensor) -> str:
    return hashlib.sha256(_data_bytes(t)).hexdigest()


def _data_xxh3(t: Tensor) -> str:
    """xxHash3-64 of a tensor's bytes (about 8 GB/s on one core: cheap enough for every read)."""
    return str(xxhash.xxh3_64_hexdigest(_data_bytes(t)))


def _record_digest(rec: dict[str, Any]) -> str:
    """xxHash3-64 of a record without its own ``checksum`` (canonical JSON: sorted keys)."""
    body = {k: v for k, v in rec.items() if k != "checksum"}
    return str(xxhash.xxh3_64_hexdigest(json.dumps(body, sort_keys=True).encode()))


def _write_record(path: Path, rec: dict[str, Any]) -> None:
    """Atomically write ``record.json`` with its checksum."""
    rec = {**rec, "checksum": _record_digest(rec)}
    _atomic_write_bytes(path, json.dumps(rec, indent=1, sort_keys=True).encode())


_RECORD_FIELDS = {"record": dict, "n_rows": int, "dim": int, "dtype": str, "shards": list}


def _parse_record(path: Path) -> dict[str, Any]:
    """The checked content of an entry's ``record.json``: ``FileNotFoundError`` when there is
    none, ``ValueError`` saying what is wrong when it is unreadable, fails its checksum
    (records written before fewclip recorded one are not checked) or lacks a field."""
    try:
        rec = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise InvalidValueError(f"not UTF-8 text ({e})") from None
    except json.JSONDecodeError as e:
        raise InvalidValueError(f"not valid JSON ({e})") from None
    if not isinstance(rec, dict):
        raise InvalidValueError("not a JSON object")
    if "checksum" in rec and rec["checksum"] != _record_digest(rec):
        raise InvalidValueError("checksum mismatch (the record changed after it was written)")
    for name, kind in _RECORD_FIELDS.items():
        if not isinstance(rec.get(name), kind):
            raise InvalidValueError(f"field {name!r} missing or not a {kind.__name__}")
    return rec


#: Shard files whose data matched their checksum in this process, by (path, inode, size,
#: mtime_ns) → digest: the store replaces files and never rewrites them in place, so a file
#: with the same identity still holds the verified bytes.
_VERIFIED: dict[tuple[str, int, int, int], str] = {}
_VERIFIED_MAX = 100_000


def _file_id(path: Path) -> tuple[str, int, int, int]:
    st = path.stat()
    return (str(path), st.st_ino, st.st_size, st.st_mtime_ns)


def _check_data(path: Path, data: Tensor, expected: dict[str, str]) -> str | None:
    """None if ``data`` (the tensor read from ``path``) matches the checksum ``expected``
    records (xxHash3 when there is one, else SHA-256), else what is wrong."""
    if "xxh3" in expected:
        algo, want = "xxh3", expected["xxh3"]
    elif "sha256" in expected:
        algo, want = "sha256", expected["sha256"]
    else:
        return "no checksum recorded"
    ident = _file_id(path)
    if _VERIFIED.get(ident) == want:
        return None
    got = _data_xxh3(data) if algo == "xxh3" else _data_sha256(data)
    if got != want:
        return f"checksum mismatch (corrupt data: {algo} {got[:12]}, recorded {want[:12]})"
    if len(_VERIFIED) >= _VERIFIED_MAX:
        _VERIFIED.clear()
    _VERIFIED[ident] = want
    return None


@dataclass(frozen=True)
class EntryInfo:
    """What ``record.json`` says about a complete entry (no tensor is loaded).

    Attributes:
        key: the entry key.
        path: the entry folder.
        record: the key record (what the key was computed from).
        n_rows, dim, dtype: shape and dtype of the stored tensor.
        n_shards, nbytes: number of shard files and their total size.
        bad_files: images that could not be decoded (their rows hold zeros), with row indices.
        meta: free-form information (backbone name and description, ...), not part of the key.
        created: UTC timestamp of completion.
        bad_accepted: a caller chose to skip ``bad_files`` (``extract(skip_bad=True)``, CLI
            ``--skip-bad``); later extractions of the same images honour that choice.
    """

    key: str
    path: Path
    record: dict[str, Any]
    n_rows: int
    dim: int
    dtype: str
    n_shards: int
    nbytes: int
    bad_files: list[tuple[int, BadImage]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    bad_accepted: bool = False

    @property
    def kind(self) -> str:
        return str(self.record.get("kind", ""))


@dataclass(frozen=True)
class Leftover:
    """What a killed or interrupted run left in a store: an entry folder without a record
    (``kind="partial"``: its finished shards let the same extraction resume), or a folder in
    ``trash/`` that a deletion did not finish (``kind="trash"``).

    Attributes:
        kind: ``"partial"`` or ``"trash"``.
        path: the folder.
        key: the entry key (for a partial entry; ``""`` for trash).
        n_files, nbytes: what it holds.
        in_use: another process holds the entry's lock (an extraction running now).
    """

    kind: str
    path: Path
    key: str
    n_files: int
    nbytes: int
    in_use: bool


class FeatureStore:
    """A folder of feature entries (see the module docstring for layout and guarantees).

    >>> store = FeatureStore("~/.cache/fewclip/features")   # doctest: +SKIP
    >>> [e.record["split"] for e in store.entries(kind="image")]   # doctest: +SKIP
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(os.path.expanduser(os.fspath(root)))

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.root)!r})"

    # --- paths ---------------------------------------------------------------------------
    def entry_dir(self, key: str) -> Path:
        if len(key) < 8 or not all(c in "0123456789abcdef" for c in key):
            raise InvalidValueError(f"key: expected a hex entry key, found {key!r}")
        return self.root / "entries" / key[:2] / key

    def _record_path(self, key: str) -> Path:
        return self.entry_dir(key) / "record.json"

    def _record(self, key: str) -> dict[str, Any]:
        """The checked ``record.json`` of ``key``: ``NotFoundError`` (a ``KeyError``) when the
        entry is not complete, :class:`CorruptEntryError` when its record is damaged."""
        path = self._record_path(key)
        try:
            return _parse_record(path)
        except FileNotFoundError:
            raise NotFoundError(f"key: no complete entry {key!r} in {self.root}") from None
        except (OSError, ValueError) as e:
            raise CorruptEntryError(
                f"entry {key} in {self.root} is damaged: record {path}: {e}. Run the command "
                f"that extracted it again to rebuild it, or remove it: fewclip cache rm {key[:12]}"
            ) from None

    # --- listing and inspection ------------------------------------------------------------
    def keys(self) -> list[str]:
        """Keys of all complete entries (those with a ``record.json``)."""
        base = self.root / "entries"
        if not base.is_dir():
            return []
        return sorted(p.parent.name for p in base.glob("*/*/record.json"))

    def leftovers(self) -> list[Leftover]:
        """Partial entries (folders without ``record.json``) and unfinished deletions."""
        out = []
        for kind, folders in (
            ("partial", sorted((self.root / "entries").glob("*/*"))),
            ("trash", sorted((self.root / "trash").glob("*"))),
        ):
            for path in folders:
                if not path.is_dir() or (kind == "partial" and (path / "record.json").exists()):
                    continue
                files = [f for f in path.rglob("*") if f.is_file()]
                key = path.name if kind == "partial" else ""
                out.append(
                    Leftover(
                        kind,
                        path,
                        key,
                        len(files),
                        sum(f.stat().st_size for f in files),
                        bool(key) and self._locked(key),
                    )
                )
        return out

    def _locked(self, key: str) -> bool:
        """Whether another process holds ``key``'s write lock right now."""
        lock = self.root / "locks" / f"{key}.lock"
        if fcntl is None or not lock.is_file():
            return False
        with open(lock, "a+b") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return True
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return False

    def remove_leftovers(self) -> list[Leftover]:
        """Delete every :meth:`leftovers` folder that no running process holds (a partial
        entry is removed under its lock, so an extraction starting meanwhile waits); returns
        what was removed. Finished entries are never touched."""
        removed = []
        for item in self.leftovers():
            if item.in_use:
                continue
            if item.kind == "trash":
                shutil.rmtree(item.path, ignore_errors=True)
                removed.append(item)
                continue
            with self.lock([item.key]):
                if (item.path / "record.json").exists():  # finished meanwhile: keep it
                    continue
                trash = self.root / "trash" / f"{item.key}.{os.getpid()}"
                trash.parent.mkdir(parents=True, exist_ok=True)
                os.replace(item.path, trash)
                shutil.rmtree(trash, ignore_errors=True)
            removed.append(item)
        return removed

    def has(self, key: str) -> bool:
        """Whether ``key`` is complete and passes the quick check (sizes and headers)."""
        try:
            return not self.verify(key, full=False)
        except (KeyError, ValueError):
            return False

    def info(self, key: str) -> EntryInfo:
        """The :class:`EntryInfo` of a complete entry. Raises ``KeyError`` if there is none."""
        path = self._record_path(key)
        rec = self._record(key)
        bad = [(int(b["index"]), BadImage(b["path"], b["reason"])) for b in rec["bad_files"]]
        return EntryInfo(
            key=key,
            path=path.parent,
            record=rec["record"],
            n_rows=int(rec["n_rows"]),
            dim=int(rec["dim"]),
            dtype=str(rec["dtype"]),
            n_shards=len(rec["shards"]),
            nbytes=sum(int(s["bytes"]) for s in rec["shards"]),
            bad_files=bad,
            meta=rec.get("meta", {}),
            created=rec.get("created", ""),
            bad_accepted=bool(rec.get("bad_accepted", False)),
        )

    def accept_bad(self, key: str) -> None:
        """Record that the bad files of ``key`` are to be skipped from now on (atomic rewrite of
        its ``record.json``; the key and the tensors do not change)."""
        rec = self._record(key)
        if rec.get("bad_accepted"):
            return
        rec["bad_accepted"] = True
        _write_record(self._record_path(key), rec)

    def entries(self, **match: Any) -> list[EntryInfo]:
        """All complete entries whose key record matches every ``field=value`` given, e.g.
        ``entries(kind="image", split="train", backbone=bb.id)``. Reads only records."""
        out = []
        for key in self.keys():
            try:
                info = self.info(key)
            except (KeyError, CorruptEntryError):
                continue
            if all(info.record.get(k) == v for k, v in match.items()):
                out.append(info)
        return out

    def size_bytes(self) -> int:
        """Total size of all files under the store root."""
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())

    def verify(self, key: str, *, full: bool = True, sha256: bool = False) -> list[str]:
        """Problems with a complete entry (empty when it is sound).

        The quick check (``full=False``) compares every shard's size and header with the
        record; the full check also checks each shard's data against its recorded checksum
        (xxHash3; SHA-256 for shards written before fewclip recorded xxHash3, or with
        ``sha256=True``). Raises ``KeyError`` when there is no complete entry.
        """
        rec_path = self._record_path(key)
        try:
            rec = _parse_record(rec_path)
        except FileNotFoundError:
            raise NotFoundError(f"key: no complete entry {key!r} in {self.root}") from None
        except (OSError, ValueError) as e:
            return [f"record {rec_path}: {e}"]
        problems = []
        for i, s in enumerate(rec["shards"]):
            path = rec_path.parent / s["file"]
            problem = _check_shard(
                path,
                key=key,
                shard=i,
                rows=int(s["stop"]) - int(s["start"]),
                dim=int(rec["dim"]),
                dtype=str(rec["dtype"]),
                nbytes=int(s["bytes"]),
                expected=_checksums(s, sha256_only=sha256) if full else None,
            )
            if problem:
                problems.append(f"shard {i} ({path}): {problem}")
        return problems

    # --- reading -----------------------------------------------------------------------------
    def load(
        self,
        key: str,
        *,
        rows: Sequence[int] | Tensor | None = None,
        mmap: bool = True,
        check: bool = True,
    ) -> Tensor:
        """The stored (N, D) tensor of ``key``, or only ``rows`` of it (in the given order).

        With ``mmap=True`` shards are memory-mapped: a single-shard entry is returned without
        copying. With ``check=True`` (the default) each shard's data is checked against its
        xxHash3 checksum when it is first read by this process, which reads the whole shard
        even when only some ``rows`` are asked for. (The store never rewrites a file in place,
        only replaces it, so a mapped tensor stays valid after a rebuild.) Raises ``KeyError``
        for a missing entry and :class:`CorruptEntryError` when a shard is damaged.
        """
        info = self.info(key)
        problems = self.verify(key, full=False)
        if problems:
            raise CorruptEntryError(self._damaged(info, problems))
        rec = self._record(key)

        def shard(i: int, s: dict[str, Any]) -> Tensor:
            path = info.path / s["file"]
            t = _read_shard(path, mmap=mmap)
            problem = _check_data(path, t, _checksums(s)) if check else None
            if problem:
                raise CorruptEntryError(self._damaged(info, [f"shard {i} ({path}): {problem}"]))
            return t

        if rows is None:
            parts = [shard(i, s) for i, s in enumerate(rec["shards"])]
            if not parts:
                return torch.empty(0, info.dim, dtype=_DTYPES[info.dtype])
            return parts[0] if len(parts) == 1 else torch.cat(parts)
        idx = torch.as_tensor(rows, dtype=torch.long).flatten()
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= info.n_rows):
            raise OutOfRangeError(
                f"rows: expected indices in [0, {info.n_rows}), found range "
                f"[{int(idx.min())}, {int(idx.max())}]"
            )
        out = torch.empty(idx.numel(), info.dim, dtype=_DTYPES[info.dtype])
        for i, s in enumerate(rec["shards"]):
            start, stop = int(s["start"]), int(s["stop"])
            sel = torch.nonzero((idx >= start) & (idx < stop)).flatten()
            if sel.numel():
                out[sel] = shard(i, s)[idx[sel] - start]
        return out

    def _damaged(self, info: EntryInfo, problems: Sequence[str]) -> str:
        """The message of a :class:`CorruptEntryError` about ``info``'s entry."""
        rec = info.record
        what = ", ".join(str(x) for x in (rec.get("kind"), rec.get("split")) if x)
        return (
            f"entry {info.key} ({what}) in {self.root} is damaged: "
            + "; ".join(problems)
            + ". Run the command that extracted it again to rebuild it from the images, or "
            + f"remove it: fewclip cache rm {info.key[:12]}"
        )

    def iter_shards(self, key: str, *, mmap: bool = True) -> Iterator[tuple[int, Tensor]]:
        """Yield ``(first row, tensor)`` per shard, memory-mapped, for out-of-core processing."""
        info = self.info(key)
        rec = self._record(key)
        for i, s in enumerate(rec["shards"]):
            path = info.path / s["file"]
            t = _read_shard(path, mmap=mmap)
            problem = _check_data(path, t, _checksums(s))
            if problem:
                raise CorruptEntryError(self._damaged(info, [f"shard {i} ({path}): {problem}"]))
            yield int(s["start"]), t

    # --- deleting ---------------------------------------------------------------------------
    def delete(self, key: str) -> None:
        """Delete an entry (complete or partial). Raises ``KeyError`` if nothing exists."""
        path = self.entry_dir(key)
        if not path.exists():
            raise NotFoundError(f"key: no entry {key!r} in {self.root}")
        with self.lock([key]):
            trash = self.root / "trash" / f"{key}.{os.getpid()}"
            trash.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, trash)
            shutil.rmtree(trash, ignore_errors=True)

    # --- writing -----------------------------------------------------------------------------
    def check_writable(self) -> None:
        """Refuse to write into a folder that is neither empty nor a feature store.

        A store's root holds only ``entries/``, ``locks/`` and ``trash/``; fewclip will not
        add them to a folder of the user's (``--store`` pointed at the wrong place), so that
        its files never mix with theirs. Raises :class:`~fewclip.errors.OutputFolderError`.
        """
        from fewclip.errors import OutputFolderError
        from fewclip.outputs import describe_entries

        root = self.root
        if root.exists() and not root.is_dir():
            raise OutputFolderError(f"{root}: expected a feature store folder, found a file")
        if not root.is_dir() or (root / "entries").is_dir():
            return
        other = [p.name for p in root.iterdir() if p.name not in ("entries", "locks", "trash")]
        if other:
            raise OutputFolderError(
                f"{root}: not a fewclip feature store and not empty "
                f"({describe_entries(root, other)}); fewclip does not write its features into "
                "a folder of yours. Choose a new or empty folder (CLI: --store; or set "
                "FEWCLIP_STORE)."
            )

    @contextlib.contextmanager
    def lock(self, keys: Sequence[str]) -> Iterator[None]:
        """Hold the exclusive write lock of every key (acquired in sorted order), after
        :meth:`check_writable`."""
        self.check_writable()
        if fcntl is None:  # pragma: no cover
            yield
            return
        lock_dir = self.root / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as stack:
            for key in sorted(set(keys)):
                f = stack.enter_context(open(lock_dir / f"{key}.lock", "a+b"))
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
                stack.callback(fcntl.flock, f.fileno(), fcntl.LOCK_UN)
            yield

    def writer(
        self,
        key: str,
        record: dict[str, Any],
        *,
        n_rows: int,
        dim: int,
        dtype: torch.dtype = torch.float32,
        shard_size: int = 4096,
        meta: dict[str, Any] | None = None,
    ) -> EntryWriter:
        """A writer for ``key`` (call while holding :meth:`lock`)."""
        if entry_key(record) != key:
            raise InvalidValueError(f"key: {key!r} is not the key of the given record")
        return EntryWriter(self, key, record, n_rows, dim, dtype, shard_size, meta or {})


def _check_shard(
    path: Path,
    *,
    key: str,
    shard: int,
    rows: int,
    dim: int,
    dtype: str,
    nbytes: int | None = None,
    expected: dict[str, str] | None = None,
    data: bool = False,
) -> str | None:
    """None if the shard file is sound, else what is wrong with it. The data is checked too
    when ``expected`` (the checksums a record holds) is given, or with ``data=True`` (against
    the checksums in the shard's own header)."""
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if nbytes is not None and size != nbytes:
        return f"size {size} bytes, expected {nbytes} (truncated or overwritten)"
    try:
        header, offset = _read_header(path)
        meta = header.get("__metadata__", {})
        t = header[_TENSOR]
        begin, end = t["data_offsets"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"unreadable safetensors header ({e})"
    if meta.get("key") != key or meta.get("shard") != str(shard):
        return "belongs to another entry or shard"
    if t.get("dtype") != dtype or t.get("shape") != [rows, dim]:
        return f"holds {t.get('dtype')} {t.get('shape')}, expected {dtype} {[rows, dim]}"
    if offset + end != size or begin != 0:
        return f"size {size} bytes, expected {offset + end} (truncated)"
    if expected is not None or data:
        try:
            tensor = _read_shard(path, mmap=True)
        except (OSError, ValueError) as e:
            return f"unreadable data ({e})"
        return _check_data(path, tensor, expected if expected is not None else _checksums(meta))
    return None


def _checksums(fields: dict[str, Any], *, sha256_only: bool = False) -> dict[str, str]:
    """The checksums among a shard's record or header fields."""
    names = ("sha256",) if sha256_only else ("xxh3", "sha256")
    return {k: str(fields[k]) for k in names if k in fields}


def _read_shard(path: Path, *, mmap: bool) -> Tensor:
    header, offset = _read_header(path)
    t = header[_TENSOR]
    st_dtype = t["dtype"]
    shape = tuple(int(s) for s in t["shape"])
    begin, end = t["data_offsets"]
    np_dtype = _NP[st_dtype]
    if int(np.prod(shape)) * np.dtype(np_dtype).itemsize != end - begin:
        raise InvalidValueError(f"{path}: data size does not match shape {shape}")
    arr: np.ndarray
    if mmap and end > begin:
        arr = np.memmap(path, dtype=np_dtype, mode="c", offset=offset + begin, shape=shape)
    else:
        with open(path, "rb") as f:
            f.seek(offset + begin)
            buf = f.read(end - begin)
        if len(buf) != end - begin:
            raise InvalidValueError(f"{path}: truncated data")
        arr = np.frombuffer(bytearray(buf), dtype=np_dtype).reshape(shape)
    out = torch.from_numpy(arr)
    return out.view(torch.bfloat16) if st_dtype == "BF16" else out


class EntryWriter:
    """Writes the shards of one entry, then its record. Obtain with :meth:`FeatureStore.writer`."""

    def __init__(
        self,
        store: FeatureStore,
        key: str,
        record: dict[str, Any],
        n_rows: int,
        dim: int,
        dtype: torch.dtype,
        shard_size: int,
        meta: dict[str, Any],
    ) -> None:
        if shard_size < 1:
            raise InvalidValueError(f"shard_size: expected a positive integer, found {shard_size}")
        if dtype not in _ST_NAME:
            raise InvalidValueError(f"dtype: expected one of {list(_ST_NAME)}, found {dtype}")
        self.store = store
        self.key = key
        self.record = record
        self.n_rows = int(n_rows)
        self.dim = int(dim)
        self.dtype = dtype
        self.shard_size = int(shard_size)
        self.meta = meta
        self.dir = store.entry_dir(key)
        self.shard_dir = self.dir / "shards"
        self._cleanup_tmp()

    def _cleanup_tmp(self) -> None:
        # Only the lock holder writes here, so any temporary file is a leftover of a killed run.
        if self.shard_dir.is_dir():
            for tmp in self.shard_dir.glob(".*.tmp"):
                with contextlib.suppress(OSError):
                    tmp.unlink()

    @property
    def n_shards(self) -> int:
        return max(1, -(-self.n_rows // self.shard_size)) if self.n_rows else 0

    def shard_range(self, i: int) -> tuple[int, int]:
        start = i * self.shard_size
        return start, min(self.n_rows, start + self.shard_size)

    def shard_path(self, i: int) -> Path:
        return self.shard_dir / f"{i:05d}.safetensors"

    def is_complete(self) -> bool:
        """The entry has a record and every shard passes the quick check."""
        return self.store.has(self.key)

    def shard_ok(self, i: int) -> bool:
        """Shard ``i`` exists, belongs to this entry, has the right shape and checksum."""
        return self.shard_problem(i) is None

    def shard_problem(self, i: int) -> str | None:
        """What is wrong with shard ``i`` (see :meth:`shard_ok`), or None."""
        start, stop = self.shard_range(i)
        return _check_shard(
            self.shard_path(i),
            key=self.key,
            shard=i,
            rows=stop - start,
            dim=self.dim,
            dtype=_ST_NAME[self.dtype],
            data=True,
        )

    def write_shard(
        self, i: int, features: Tensor, bad: Sequence[tuple[int, BadImage]] = ()
    ) -> None:
        """Atomically write shard ``i`` (its rows' features and the bad images among them)."""
        start, stop = self.shard_range(i)
        if tuple(features.shape) != (stop - start, self.dim):
            raise InvalidValueError(
                f"features: expected shape {(stop - start, self.dim)} for shard {i}, "
                f"found {tuple(features.shape)}"
            )
        self._save(self.shard_path(i), i, features, bad, stop=str(stop))
        with contextlib.suppress(FileNotFoundError):
            self.partial_path(i).unlink()

    def _save(
        self,
        path: Path,
        i: int,
        features: Tensor,
        bad: Sequence[tuple[int, BadImage]],
        **extra: str,
    ) -> None:
        """Atomically write rows of shard ``i`` with the header every reader checks (key,
        shard, start, SHA-256 of the data, bad images) plus ``extra`` fields."""
        data = features.detach().to("cpu", self.dtype).contiguous()
        meta = {
            "key": self.key,
            "shard": str(i),
            "start": str(self.shard_range(i)[0]),
            **extra,
            "sha256": _data_sha256(data),
            "xxh3": _data_xxh3(data),
            "bad": json.dumps([[j, b.path, b.reason] for j, b in bad]),
            "format": str(STORE_FORMAT),
        }
        _atomic_write_bytes(path, _safetensors_bytes(data, meta))

    def partial_path(self, i: int) -> Path:
        return self.shard_dir / f"{i:05d}.partial"

    def write_partial(
        self, i: int, features: Tensor, bad: Sequence[tuple[int, BadImage]] = ()
    ) -> None:
        """Atomically save the first rows of unfinished shard ``i`` (``features`` holds rows
        ``start .. start + len(features)``), so an interrupted extraction resumes from them."""
        start, stop = self.shard_range(i)
        if features.shape[0] >= stop - start or features.shape[1:] != (self.dim,):
            raise InvalidValueError(
                f"features: a partial shard {i} needs fewer than {stop - start} rows of "
                f"dimension {self.dim}, found {tuple(features.shape)}"
            )
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        self._save(self.partial_path(i), i, features, bad, rows=str(int(features.shape[0])))

    def read_partial(self, i: int) -> tuple[Tensor, list[tuple[int, BadImage]]] | None:
        """The rows saved by :meth:`write_partial` for shard ``i`` and their bad images, or
        ``None`` when there is no valid partial (a damaged one is ignored and recomputed)."""
        from safetensors import SafetensorError
        from safetensors.torch import load

        path = self.partial_path(i)
        if not path.is_file():
            return None
        try:
            blob = path.read_bytes()
            header, _ = _read_header(path)
            meta = header["__metadata__"]
            data = load(blob)[_TENSOR]
            start, stop = self.shard_range(i)
            ok = (
                meta["key"] == self.key
                and int(meta["shard"]) == i
                and int(meta["start"]) == start
                and data.shape[0] == int(meta["rows"]) < stop - start
                and tuple(data.shape[1:]) == (self.dim,)
                and data.dtype == self.dtype
                and _check_data(path, data, _checksums(meta)) is None
            )
            raw = json.loads(meta.get("bad", "[]"))
        except (OSError, ValueError, KeyError, TypeError, SafetensorError):
            return None
        if not ok:
            return None
        return data, [(int(j), BadImage(p, r)) for j, p, r in raw]

    def shard_bad(self, i: int) -> list[tuple[int, BadImage]]:
        header, _ = _read_header(self.shard_path(i))
        raw = json.loads(header.get("__metadata__", {}).get("bad", "[]"))
        return [(int(j), BadImage(p, r)) for j, p, r in raw]

    def finalize(self) -> EntryInfo:
        """Write ``record.json`` (after every shard is in place) and return the entry info."""
        shards = []
        bad: list[tuple[int, BadImage]] = []
        for i in range(self.n_shards):
            path = self.shard_path(i)
            if not self.shard_ok(i):
                raise CorruptEntryError(f"entry {self.key}: shard {i} ({path}) is not written")
            header, _ = _read_header(path)
            start, stop = self.shard_range(i)
            shards.append(
                {
                    "file": f"shards/{path.name}",
                    "start": start,
                    "stop": stop,
                    "bytes": path.stat().st_size,
                    **_checksums(header["__metadata__"]),
                }
            )
            bad.extend(self.shard_bad(i))
        rec = {
            "format": STORE_FORMAT,
            "key": self.key,
            "record": self.record,
            "n_rows": self.n_rows,
            "dim": self.dim,
            "dtype": _ST_NAME[self.dtype],
            "shard_size": self.shard_size,
            "shards": shards,
            "bad_files": [{"index": j, "path": b.path, "reason": b.reason} for j, b in bad],
            "meta": self.meta,
            "created": _now(),
            "fewclip_version": __version__,
        }
        _write_record(self.dir / "record.json", rec)
        return self.store.info(self.key)

    def invalidate(self) -> None:
        """Remove the record (the entry becomes incomplete; valid shards are kept)."""
        with contextlib.suppress(FileNotFoundError):
            (self.dir / "record.json").unlink()
