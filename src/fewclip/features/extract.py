"""Batched image-feature extraction with seeded augmented views and an on-disk cache.

:func:`extract` decodes every image once per pass and produces, in the same pass, the plain
features (the model's evaluation transform) and any number of augmented views (the training
transform, seeded per ``(seed, view, image index)`` so a view never depends on the batch size,
the number of workers or which other views are computed). Features are **raw** (un-normalised).

With a :class:`~fewclip.features.store.FeatureStore`, each (view, split) is one entry; a second
call with the same inputs is served from the store without running the model, an interrupted
call resumes from its finished shards, and damaged shards are rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from fewclip._version import __version__
from fewclip.backbones.base import Backbone
from fewclip.errors import InvalidTypeError, InvalidValueError
from fewclip.executors import Executor, ExecutorError, LocalExecutor, RayExecutor
from fewclip.features.store import STORE_FORMAT, EntryWriter, FeatureStore, entry_key
from fewclip.imageio import (
    BadImage,
    BadImageError,
    ImageDecodeError,
    ImageSource,
    decode_image,
    describe_source,
)
from fewclip.task import FeatureSet

__all__ = [
    "PLAIN",
    "ExtractResult",
    "ExtractionInterrupted",
    "dataset_fingerprint",
    "extract",
    "image_key_record",
]

PLAIN = -1
"""View index of the plain (evaluation-transform) features; augmented views are 0..V-1."""

# Test hook: called as _after_shard(view, shard) after each shard is written (see tests).
_after_shard: Callable[[int, int], None] | None = None


@dataclass
class ExtractResult:
    """What :func:`extract` returns.

    Attributes:
        features: (N, D) raw plain features, or ``None`` with ``plain=False``.
        views: (V, N, D) raw features of the V augmented views, or ``None`` when ``views=0``.
        labels: (N,) labels if given.
        index: (N,) positions in the input of the rows returned (all positions unless
            ``skip_bad=True`` dropped bad images).
        bad_files: images that could not be decoded, with their input positions in
            ``bad_index``; never silently dropped.
        keys: store key of each view (``"plain"``, ``"view0"``, ...), empty without a store.
        n_encoded: number of images run through the model by this call (0 when every entry
            came from the store).
        bad_accepted_earlier: ``bad_files`` were dropped without ``skip_bad`` because an
            earlier ``skip_bad=True`` extraction of the same images accepted them.
    """

    features: Tensor | None
    views: Tensor | None
    labels: Tensor | None
    index: Tensor
    bad_files: list[BadImage] = field(default_factory=list)
    bad_index: list[int] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)
    n_encoded: int = 0
    bad_accepted_earlier: bool = False

    def feature_set(self) -> FeatureSet:
        """The result as a :class:`fewclip.task.FeatureSet` (needs labels and plain features)."""
        if self.labels is None:
            raise InvalidValueError("labels: pass labels= to extract() to build a FeatureSet")
        if self.features is None:
            raise InvalidValueError("features: extract() was called with plain=False")
        return FeatureSet(self.features, self.labels, self.views)


def _view_name(view: int) -> str:
    return "plain" if view == PLAIN else f"view{view}"


def dataset_fingerprint(images: Sequence[ImageSource], *, dataset_id: str | None = None) -> str:
    """SHA-256 identifying an ordered list of images.

    Paths contribute their absolute path, size and modification time (a file edited in place
    gets a new fingerprint); in-memory images and bytes contribute a hash of their content.
    With ``dataset_id`` (e.g. a dataset name and version you vouch for) paths contribute only
    their string as given, so a copied or moved dataset keeps its cache.
    """
    h = hashlib.sha256(f"n={len(images)};id={dataset_id}\n".encode())
    for src in images:
        if isinstance(src, Image.Image):
            h.update(f"pil:{src.mode}:{src.size}:".encode())
            h.update(hashlib.sha256(src.tobytes()).digest())
        elif isinstance(src, (bytes, bytearray)):
            h.update(b"bytes:" + hashlib.sha256(bytes(src)).digest())
        else:
            p = os.fspath(src)
            if dataset_id is not None:
                h.update(f"path:{p}".encode())
            else:
                ap = os.path.abspath(p)
                try:
                    st = os.stat(ap)
                    h.update(f"path:{ap}:{st.st_size}:{st.st_mtime_ns}".encode())
                except OSError:
                    h.update(f"path:{ap}:missing".encode())
        h.update(b"\n")
    return h.hexdigest()


def image_key_record(
    backbone: Backbone,
    *,
    view: int,
    seed: int,
    dataset: str,
    n: int,
    split: str,
    dtype: torch.dtype,
) -> dict[str, Any]:
    """The key record of one image-feature entry (everything that changes its content)."""
    view_rec: dict[str, Any]
    if view == PLAIN:
        view_rec = {"type": "plain"}
    else:
        view_rec = {
            "type": "augment",
            "index": int(view),
            "seed": int(seed),
            "augment": backbone.augment.to_dict(),
        }
    return {
        "kind": "image",
        "format": STORE_FORMAT,
        "fewclip_version": __version__,
        "backbone": backbone.id,
        "preprocess": backbone.preprocess.to_dict(),
        "precision": backbone.compute_precision,
        "view": view_rec,
        "dataset": dataset,
        "n": int(n),
        "split": split,
        "dtype": str(dtype).replace("torch.", ""),
        "decode": {"background": [255, 255, 255], "exif_transpose": True},
    }


class _ViewDataset(Dataset[tuple[int, Tensor, bool, str]]):
    """Item i → (i, (k, 3, H, W) tensors of the k views needed for i's shard, ok, reason)."""

    def __init__(
        self,
        images: Sequence[ImageSource],
        backbone: Backbone,
        views_of_shard: dict[int, list[int]],
        shard_size: int,
        seed: int,
    ) -> None:
        self.images = images
        self.eval_transform = backbone.eval_transform
        self.train_transform = backbone.train_transform
        self.views_of_shard = views_of_shard
        self.shard_size = shard_size
        self.seed = seed
        self.size = backbone.preprocess.size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[int, Tensor, bool, str]:
        from fewclip.backbones.transforms import view_generator

        views = self.views_of_shard[i // self.shard_size]
        try:
            img = decode_image(self.images[i])
            out: list[Tensor] = []
            for v in views:
                if v == PLAIN:
                    out.append(self.eval_transform(img))
                else:
                    out.append(self.train_transform(img, view_generator(self.seed, v, i)))
            return i, torch.stack(out), True, ""
        except ImageDecodeError as e:
            reason = e.reason
        except Exception as e:  # a transform failing on an odd image is reported, not fatal
            reason = f"could not be transformed ({type(e).__name__}: {e})"
        return i, torch.zeros(len(views), 3, *self.size), False, reason


def _batches(
    views_of_shard: dict[int, list[int]],
    n: int,
    shard_size: int,
    batch_size: int,
    done: dict[int, int] | None = None,
) -> list[list[int]]:
    """Image-index batches that never cross a shard, sized so a model batch ≈ batch_size;
    shard ``s`` starts after its first ``done[s]`` rows (saved by an interrupted run)."""
    out: list[list[int]] = []
    for s in sorted(views_of_shard):
        per = max(1, batch_size // max(1, len(views_of_shard[s])))
        start, stop = s * shard_size, min(n, (s + 1) * shard_size)
        first = start + (done or {}).get(s, 0)
        out.extend(list(range(b, min(stop, b + per))) for b in range(first, stop, per))
    return out


class ExtractionInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`extract`; the message says what was kept and how to resume.

    Finished shards and the saved part of the current one stay in the store, so running the
    same extraction again continues where it stopped.
    """


class _MemorySink:
    """Stand-in for an EntryWriter when no store is used."""

    def __init__(self, n_rows: int, shard_size: int) -> None:
        self.n_rows = n_rows
        self.shard_size = shard_size
        self.shards: dict[int, Tensor] = {}
        self.bad: dict[int, list[tuple[int, BadImage]]] = {}

    @property
    def n_shards(self) -> int:
        return -(-self.n_rows // self.shard_size) if self.n_rows else 0

    def write_shard(self, i: int, features: Tensor, bad: Sequence[tuple[int, BadImage]]) -> None:
        self.shards[i] = features.detach().to("cpu")
        self.bad[i] = list(bad)


def _progress(enabled: bool | None, total: int, desc: str) -> Any:
    from tqdm.auto import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, leave=False)


def extract(
    backbone: Backbone,
    images: Sequence[ImageSource],
    *,
    labels: Tensor | Sequence[int] | None = None,
    views: int = 0,
    seed: int = 0,
    plain: bool = True,
    store: FeatureStore | str | os.PathLike | None = None,
    split: str = "data",
    dataset_id: str | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    skip_bad: bool = False,
    dtype: torch.dtype = torch.float32,
    shard_size: int = 4096,
    progress: bool | None = None,
    verify: bool = False,
    commit_seconds: float | None = 30.0,
    executor: Executor | None = None,
) -> ExtractResult:
    """Extract raw image features: plain features and ``views`` seeded augmented views.

    Args:
        backbone: a loaded :class:`~fewclip.backbones.Backbone`.
        images: image paths (or encoded bytes, or PIL images), in dataset order.
        labels: optional (N,) class ids, returned with the features (not used for extraction).
        views: number V of augmented views (the backbone's training transform).
        seed: seed of the augmented views; view ``v`` of image ``i`` depends only on
            ``(seed, v, i)`` and the image.
        plain: also extract the plain (evaluation-transform) features.
        store: a :class:`FeatureStore` or its folder; ``None`` keeps everything in memory.
        split: split name recorded in the store key (``"train"``, ``"test"``, ...).
        dataset_id: optional identity of the dataset (see :func:`dataset_fingerprint`).
        batch_size: images per model call (views of an image count separately).
        num_workers: DataLoader worker processes for decoding and transforms.
        skip_bad: drop undecodable images from the result (they are listed in ``bad_files``
            and the choice is recorded in the store); when False such images raise
            :class:`BadImageError` listing every one, after the whole pass, unless an earlier
            ``skip_bad=True`` extraction of the same images accepted exactly those files.
        dtype: storage dtype (float32 default; float16/bfloat16 halve the disk space).
        shard_size: rows per shard file (the granularity of resuming).
        progress: show a progress bar (default: only when stderr is a terminal).
        verify: also re-hash every stored shard with SHA-256 before trusting a complete entry
            (by default its sizes, headers and xxHash3 checksums are checked). A damaged entry
            is rebuilt from the images (only its damaged shards), with one warning saying
            what, why and how long.
        commit_seconds: with a store, save the rows of an unfinished shard every this many
            seconds, so an interrupted run (:class:`ExtractionInterrupted` on Ctrl-C) loses at
            most that much work; ``None`` saves whole shards only.

    Returns:
        :class:`ExtractResult` with ``features`` (N, D), ``views`` (V, N, D) (float ``dtype``,
        CPU), ``labels``, ``index``, ``bad_files``.
    """
    if not isinstance(backbone, Backbone):
        raise InvalidTypeError(
            f"backbone: expected a fewclip Backbone, found {type(backbone).__name__}"
        )
    if isinstance(images, (str, os.PathLike)):
        raise InvalidTypeError("images: expected a sequence of images, found a single path")
    images = list(images)
    n = len(images)
    if views < 0:
        raise InvalidValueError(f"views: expected a non-negative number of views, found {views}")
    if not plain and views == 0:
        raise InvalidValueError("plain=False and views=0: nothing to extract")
    if batch_size < 1:
        raise InvalidValueError(f"batch_size: expected a positive integer, found {batch_size}")
    y = None
    if labels is not None:
        y = torch.as_tensor(labels)
        if y.shape != (n,):
            raise InvalidValueError(f"labels: expected shape ({n},), found {tuple(y.shape)}")
    if isinstance(store, (str, os.PathLike)):
        store = FeatureStore(store)
    on_ray = executor is not None and not isinstance(executor, LocalExecutor)
    if on_ray and store is None:
        raise InvalidValueError(
            "store: the Ray executor writes the shards into a feature store shared by its "
            "workers; pass store= (a folder on a shared filesystem)"
        )

    view_ids = ([PLAIN] if plain else []) + list(range(views))
    keys: dict[int, str] = {}
    records: dict[int, dict[str, Any]] = {}
    if store is not None:
        fp = dataset_fingerprint(images, dataset_id=dataset_id)
        for v in view_ids:
            records[v] = image_key_record(
                backbone, view=v, seed=seed, dataset=fp, n=n, split=split, dtype=dtype
            )
            keys[v] = entry_key(records[v])

    lock = store.lock(list(keys.values())) if store is not None else contextlib.nullcontext()
    damaged: dict[int, list[str]] = {}  # views whose complete entry failed its checks
    with lock:
        sinks: dict[int, EntryWriter | _MemorySink] = {}
        todo: dict[int, list[int]] = {}  # shard -> views to compute
        for v in view_ids:
            if store is None:
                sinks[v] = _MemorySink(n, shard_size)
                for s in range(sinks[v].n_shards):
                    todo.setdefault(s, []).append(v)
                continue
            meta = {"backbone": backbone.describe(), "source": "fewclip.features.extract"}
            try:
                problems = store.verify(keys[v], full=True, sha256=verify)
            except KeyError:
                pass  # no record: a first or an interrupted extraction (finished shards kept)
            else:
                if not problems:
                    continue
                damaged[v] = problems
            w = store.writer(
                keys[v],
                records[v],
                n_rows=n,
                dim=backbone.embed_dim,
                dtype=dtype,
                shard_size=_existing_shard_size(store, keys[v], shard_size),
                meta=meta,
            )
            w.invalidate()
            sinks[v] = w
            for s in range(w.n_shards):
                if not w.shard_ok(s):
                    todo.setdefault(s, []).append(v)
            kept = w.n_shards - sum(v in vs for vs in todo.values())
            if v not in damaged and kept:
                warnings.warn(
                    f"resuming entry {keys[v][:12]} ({split}, {_view_name(v)}) in {store.root}: "
                    f"{kept} of {w.n_shards} shards are already on disk (an interrupted run, or "
                    "a lost record)",
                    RuntimeWarning,
                    stacklevel=2,
                )
        started = time.monotonic()
        try:
            if on_ray:
                assert isinstance(executor, RayExecutor)
                n_encoded = _run_on_ray(
                    executor,
                    backbone,
                    images,
                    sinks,
                    todo,
                    seed,
                    batch_size,
                    num_workers,
                    progress,
                    commit_seconds,
                )
            else:
                n_encoded = _run(
                    backbone,
                    images,
                    sinks,
                    todo,
                    seed,
                    batch_size,
                    num_workers,
                    progress,
                    commit_seconds,
                )
        except KeyboardInterrupt:
            raise ExtractionInterrupted(_kept_message(sinks, store, split)) from None
        for sink in sinks.values():
            if isinstance(sink, EntryWriter):
                sink.finalize()
        for v, problems in damaged.items():
            assert store is not None  # only stored entries can be damaged
            redone = sum(v in vs for vs in todo.values())
            warnings.warn(
                f"rebuilt entry {keys[v][:12]} ({split}, {_view_name(v)}) in {store.root}: "
                f"{problems[0]}{f' (and {len(problems) - 1} more)' if len(problems) > 1 else ''}"
                f"; {redone} of {sinks[v].n_shards} shards encoded again from the images in "
                f"{time.monotonic() - started:.1f} s",
                RuntimeWarning,
                stacklevel=2,
            )

    # Gather results and bad files.
    bad: dict[int, BadImage] = {}
    tensors: dict[int, Tensor] = {}
    accepted = True  # every stored entry with bad files was accepted by an earlier skip_bad
    for v in view_ids:
        if store is None:
            sink = sinks[v]
            assert isinstance(sink, _MemorySink)
            parts = [sink.shards[s] for s in range(sink.n_shards)]
            tensors[v] = torch.cat(parts).to(dtype) if parts else torch.empty(0, backbone.embed_dim)
            for lst in sink.bad.values():
                bad.update(dict(lst))
        else:
            info = store.info(keys[v])
            tensors[v] = store.load(keys[v], mmap=False)
            bad.update(dict(info.bad_files))
            if info.bad_files and not info.bad_accepted:
                accepted = False
    bad_index = sorted(bad)
    bad_files = [bad[i] for i in bad_index]
    accepted_earlier = bool(bad_files) and store is not None and accepted
    if bad_files and not (skip_bad or accepted_earlier):
        raise BadImageError(bad_files, total=n)
    if bad_files and skip_bad and store is not None:
        for key in keys.values():
            if store.info(key).bad_files:
                store.accept_bad(key)
    keep = torch.ones(n, dtype=torch.bool)
    if bad_index:
        keep[torch.tensor(bad_index)] = False
    index = torch.nonzero(keep).flatten()
    sel = (lambda t: t[index]) if bad_index else (lambda t: t)
    features = sel(tensors[PLAIN]) if plain else None
    view_tensor = torch.stack([sel(tensors[v]) for v in range(views)]) if views else None
    return ExtractResult(
        features=features,
        views=view_tensor,
        labels=None if y is None else sel(y),
        index=index,
        bad_files=bad_files,
        bad_index=bad_index,
        keys={_view_name(v): k for v, k in keys.items()},
        n_encoded=n_encoded,
        bad_accepted_earlier=accepted_earlier and not skip_bad,
    )


def _existing_shard_size(store: FeatureStore, key: str, default: int) -> int:
    """The shard size of a partially written entry (so its shards are reused), else default."""
    from fewclip.features.store import _read_header

    shard0 = store.entry_dir(key) / "shards" / "00000.safetensors"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        meta = _read_header(shard0)[0]["__metadata__"]
        rows = int(meta["stop"]) - int(meta["start"])
        if rows > 0:
            return rows
    return default


def _kept_message(
    sinks: dict[int, EntryWriter | _MemorySink], store: FeatureStore | None, split: str
) -> str:
    """What an interrupted extraction leaves in the store, and how to resume."""
    writers = [w for w in sinks.values() if isinstance(w, EntryWriter)]
    if store is None or not writers:
        return f"{split}: extraction interrupted; nothing is kept without a feature store"
    total = sum(w.n_rows for w in writers)
    kept = 0
    for w in writers:
        for i in range(w.n_shards):
            start, stop = w.shard_range(i)
            if w.shard_ok(i):
                kept += stop - start
            else:
                part = w.read_partial(i)
                kept += 0 if part is None else len(part[0])
    return (
        f"{split}: extraction interrupted; {kept} of {total} image-view rows are kept in the "
        f"feature store {store.root}. Run the same command again to resume from there."
    )


def _run(
    backbone: Backbone,
    images: Sequence[ImageSource],
    sinks: dict[int, EntryWriter | _MemorySink],
    todo: dict[int, list[int]],
    seed: int,
    batch_size: int,
    num_workers: int,
    progress: bool | None,
    commit_seconds: float | None = None,
) -> int:
    """Encode the shards in ``todo`` and write them to their sinks; returns images encoded.

    A store shard is resumed from the rows an interrupted run saved for every view it needs,
    and while a shard is unfinished its rows so far are saved every ``commit_seconds``.
    """
    if not todo:
        return 0
    some = next(iter(sinks.values()))
    shard_size = some.shard_size
    n = len(images)
    todo = {s: sorted(vs, key=lambda v: (v != PLAIN, v)) for s, vs in sorted(todo.items())}
    saved: dict[int, dict[int, tuple[Tensor, list[tuple[int, BadImage]]]]] = {}
    writers = {v: w for v, w in sinks.items() if isinstance(w, EntryWriter)}
    for s, vs in todo.items():
        parts = {v: writers[v].read_partial(s) for v in vs if v in writers}
        if len(parts) == len(vs) and all(p is not None for p in parts.values()):
            saved[s] = {v: p for v, p in parts.items() if p is not None}
    done = {s: min(len(p[0]) for p in parts.values()) for s, parts in saved.items()}
    dataset = _ViewDataset(images, backbone, todo, shard_size, seed)
    batches = _batches(todo, n, shard_size, batch_size, done)
    loader = DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=num_workers,
        pin_memory=backbone.device.type == "cuda",
        persistent_workers=False,
        prefetch_factor=4 if num_workers > 0 else None,
    )
    total = sum(min(n, (s + 1) * shard_size) - s * shard_size - done.get(s, 0) for s in todo)
    buffers: dict[int, list[Tensor]] = {}
    bad: list[tuple[int, BadImage]] = []
    current = -1
    encoded = 0
    last_commit = time.monotonic()
    with _progress(progress, total, f"extract {backbone.name}") as bar:
        for idx, x, ok, reasons in _iter(loader):
            s = int(idx[0]) // shard_size
            if s != current:
                k0 = done.get(s, 0)
                buffers = {v: [saved[s][v][0][:k0]] if k0 else [] for v in todo[s]}
                first = s * shard_size + k0
                earlier = {b[0]: b for p in saved.get(s, {}).values() for b in p[1] if b[0] < first}
                bad = [earlier[i] for i in sorted(earlier)]
                current = s
                last_commit = time.monotonic()
            k = x.shape[1]
            feats = torch.zeros(x.shape[0], k, backbone.embed_dim)
            if bool(ok.any()):
                good = x[ok].flatten(0, 1)
                out = backbone.encode_images(good).to("cpu")
                feats[ok] = out.view(-1, k, backbone.embed_dim)
                encoded += int(ok.sum())
            for j in torch.nonzero(~ok).flatten().tolist():
                i = int(idx[j])
                bad.append((i, BadImage(describe_source(images[i]), reasons[j])))
            for c, v in enumerate(todo[s]):
                buffers[v].append(feats[:, c])
            bar.update(x.shape[0])
            start, stop = s * shard_size, min(n, (s + 1) * shard_size)
            if (
                int(idx[-1]) != stop - 1
                and commit_seconds is not None
                and time.monotonic() - last_commit >= commit_seconds
            ):
                for v in todo[s]:
                    sink = sinks[v]
                    if isinstance(sink, EntryWriter):
                        sink.write_partial(s, torch.cat(buffers[v]), bad)
                last_commit = time.monotonic()
            if int(idx[-1]) == stop - 1:
                for v in todo[s]:
                    shard = torch.cat(buffers[v])
                    assert shard.shape[0] == stop - start
                    sinks[v].write_shard(s, shard, bad)
                    if _after_shard is not None:
                        _after_shard(v, s)
    return encoded


def _iter(loader: DataLoader[Any]) -> Iterator[tuple[Tensor, Tensor, Tensor, list[str]]]:
    for idx, x, ok, reasons in loader:
        yield idx, x, ok, list(reasons)


# -- Ray: shards encoded by a pool of actors --------------------------------------------------
@dataclass
class _RayJob:
    """What every extraction actor receives once (through Ray's object store)."""

    backbone: Backbone
    images: list[ImageSource]
    writers: dict[int, EntryWriter]
    seed: int
    batch_size: int
    num_workers: int
    commit_seconds: float | None


def _ray_setup(job: _RayJob) -> _RayJob:
    """Runs in each actor once: the backbone onto this worker's accelerator, if it has one."""
    if job.backbone.device.type == "cuda":
        job.backbone.to("cuda")
    return job


def _ray_encode_shard(job: _RayJob, item: tuple[int, list[int]]) -> int:
    """Runs in an actor: encode shard ``s`` for ``views`` and write it into the store."""
    s, views = item
    sinks: dict[int, EntryWriter | _MemorySink] = {v: job.writers[v] for v in views}
    return _run(
        job.backbone,
        job.images,
        sinks,
        {s: views},
        job.seed,
        job.batch_size,
        job.num_workers,
        False,
        job.commit_seconds,
    )


def _run_on_ray(
    executor: RayExecutor,
    backbone: Backbone,
    images: Sequence[ImageSource],
    sinks: dict[int, EntryWriter | _MemorySink],
    todo: dict[int, list[int]],
    seed: int,
    batch_size: int,
    num_workers: int,
    progress: bool | None,
    commit_seconds: float | None,
) -> int:
    """:func:`_run` with the shards of ``todo`` spread over Ray actors; every shard a worker
    reports done is checked here (the store must be shared with the workers)."""
    if not todo:
        return 0
    writers = {v: w for v, w in sinks.items() if isinstance(w, EntryWriter)}
    job = _RayJob(backbone, list(images), writers, seed, batch_size, num_workers, commit_seconds)
    items = [(s, sorted(vs, key=lambda v: (v != PLAIN, v))) for s, vs in sorted(todo.items())]
    some = next(iter(writers.values()))
    encoded = 0
    total = sum(some.shard_range(s)[1] - some.shard_range(s)[0] for s, _ in items)
    gpus = 1.0 if backbone.device.type == "cuda" else 0.0
    with _progress(progress, total, f"extract {backbone.name} on {executor.describe()}") as bar:
        outcomes = executor.map(_ray_setup, job, _ray_encode_shard, items, gpus_per_worker=gpus)
        for i, out in outcomes:
            if isinstance(out, BaseException):
                raise out
            s, views = items[i]
            for v in views:
                problem = writers[v].shard_problem(s)
                if problem is not None:
                    raise ExecutorError(
                        f"shard {s} of entry {writers[v].key[:12]}: a Ray worker wrote it, but "
                        f"here it is {problem}. The feature store {writers[v].store.root} must "
                        "be on a filesystem every worker shares (the same path on every node)"
                    )
                if _after_shard is not None:
                    _after_shard(v, s)
            encoded += int(out)
            start, stop = some.shard_range(s)
            bar.update(stop - start)
    return encoded
