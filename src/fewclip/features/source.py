"""A :class:`~fewclip.protocol.FeatureSource` over a dataset of images and a backbone.

``DatasetSource(dataset, backbone, store=...)`` answers ``labels(split)`` from the dataset alone
and ``features(split, index, views=...)`` by extracting through the feature store, so each
image is encoded once and every method, seed and shot count reuses it:

- splits up to ``whole_split_limit`` images are extracted whole (one store entry per view) and
  indexed, so every draw of every seed hits the same entries;
- larger splits (ImageNet's 1.28 M training images) are extracted only for the rows a plan asks
  for; the entry is keyed by exactly those images, so repeating a draw is still free.

The source never reads a split it is not asked for; the protocol decides what it is asked for.

Undecodable images: with ``skip_bad=True`` (or when an earlier ``skip_bad`` extraction of the
same images accepted them) a split's bad images are found before anything is planned on it, and
the split is seen without them: ``labels``, ``features`` and ``dataset`` all describe the
remaining images, in their original order, and ``skipped`` lists what was left out (path and
reason). Store entries stay keyed by the full image list, so nothing is encoded twice.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from fewclip.backbones.base import Backbone
from fewclip.data.types import Dataset, ImageList
from fewclip.errors import InvalidValueError
from fewclip.features.extract import ExtractResult, extract
from fewclip.features.store import FeatureStore
from fewclip.imageio import BadImage, BadImageError, decode_image
from fewclip.task import FeatureSet

__all__ = ["DatasetSource"]


class DatasetSource:
    """Features of a :class:`fewclip.data.Dataset` encoded by a backbone, cached in a store.

    Args:
        dataset: the images (``fewclip.data.load``, ``load_benchmark``, ``load_folder`` ...).
        backbone: the frozen encoder.
        store: feature store (or its folder); ``None`` keeps features in memory for this
            object's lifetime only.
        views: augmented views per support image (the training transform).
        view_seed: seed of the augmented views (view ``v`` of image ``i`` depends only on it).
        whole_split_limit: splits with at most this many images are extracted whole.
        batch_size, num_workers, progress: passed to :func:`fewclip.features.extract`.
        skip_bad: leave undecodable images out (listed in ``skipped``) instead of raising
            :class:`~fewclip.imageio.BadImageError` (see the module docstring).

    Attributes:
        dataset: the dataset as seen through the source (without skipped images).
        original: the dataset as given.
        skipped: split → the images left out of it, with reasons (only splits read so far).
    """

    def __init__(
        self,
        dataset: Dataset,
        backbone: Backbone,
        *,
        store: FeatureStore | str | os.PathLike[str] | None = None,
        views: int = 10,
        view_seed: int = 0,
        whole_split_limit: int = 20_000,
        batch_size: int = 64,
        num_workers: int = 0,
        progress: bool | None = None,
        skip_bad: bool = False,
    ) -> None:
        if views < 0:
            raise InvalidValueError(f"views: expected a non-negative number, found {views}")
        self.dataset = dataset
        self.original = dataset
        self.skip_bad = skip_bad
        self.skipped: dict[str, list[BadImage]] = {}
        self._kept: dict[str, Tensor] = {}
        self.backbone = backbone
        self.store = FeatureStore(store) if isinstance(store, (str, os.PathLike)) else store
        self.views = views
        self.view_seed = view_seed
        self.whole_split_limit = whole_split_limit
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.progress = progress
        self._memo: dict[tuple[str, tuple[int, ...] | None, int], ExtractResult] = {}
        self.n_encoded = 0

    def splits(self) -> list[str]:
        return list(self.dataset.splits)

    def labels(self, split: str) -> Tensor:
        self._drop_bad(split)
        return torch.tensor(self.dataset.split(split).labels, dtype=torch.long)

    def skipped_images(self) -> list[dict[str, str]]:
        """Every image left out so far, as ``{"split", "path", "reason"}`` records."""
        return [{"split": s, **b.to_dict()} for s, bad in self.skipped.items() for b in bad]

    def _drop_bad(self, split: str) -> None:
        """Find the undecodable images of ``split`` once and hide them from ``dataset``.

        A split of up to ``whole_split_limit`` images is found out by extracting its plain
        features (needed anyway); a larger one only with ``skip_bad``, by decoding every image.
        """
        if split in self._kept or split not in self.original.splits:
            return
        lst = self.original.split(split)
        if len(lst) <= self.whole_split_limit:
            res = self._extract(split, None, 0)
            bad_index, bad = res.bad_index, res.bad_files
        elif self.skip_bad:
            bad_index, bad = [], []
            for i in range(len(lst)):
                try:
                    decode_image(lst.open(i) if lst.loader is not None else lst.abspath(i))
                except ValueError as e:
                    bad_index.append(i)
                    bad.append(BadImage(str(lst.abspath(i)), getattr(e, "reason", str(e))))
        else:
            bad_index, bad = [], []
        keep = torch.ones(len(lst), dtype=torch.bool)
        if bad_index:
            keep[torch.tensor(bad_index, dtype=torch.long)] = False
        self._kept[split] = torch.nonzero(keep).flatten()
        self.skipped[split] = list(bad)
        if bad_index:
            clean = lst.subset(self._kept[split].tolist())
            self.dataset = dataclasses.replace(
                self.dataset, splits={**self.dataset.splits, split: clean}
            )

    def _images(self, lst: ImageList) -> list[Any]:
        if lst.loader is not None:
            return [lst.open(i) for i in range(len(lst))]
        return [str(p) for p in lst.abspaths()]

    def _extract(self, split: str, index: tuple[int, ...] | None, views: int) -> ExtractResult:
        memo_key = (split, index, views)
        if memo_key in self._memo:
            return self._memo[memo_key]
        lst = self.original.split(split)
        if index is not None:
            kept = self._kept.get(split)
            lst = lst.subset(index if kept is None else kept[list(index)].tolist())
        res = extract(
            self.backbone,
            self._images(lst),
            labels=list(lst.labels),
            views=views,
            seed=self.view_seed,
            store=self.store,
            split=f"{self.dataset.name}/{split}",
            dataset_id=lst.fingerprint() if lst.loader is not None else None,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            progress=self.progress,
            skip_bad=self.skip_bad,
        )
        if index is not None and res.bad_files:
            # only rows of a split too large to scan up front get here with bad images
            raise BadImageError(res.bad_files, total=len(lst))
        self.n_encoded += res.n_encoded
        self._memo[memo_key] = res
        return res

    def features(
        self, split: str, index: Sequence[int] | None = None, *, views: bool = False
    ) -> FeatureSet:
        """Raw features (and, with ``views``, the augmented views) of ``split`` rows ``index``
        (all rows when ``None``), in that order."""
        self._drop_bad(split)
        n_split = len(self.dataset.split(split))
        n_views = self.views if views else 0
        whole = index is None or n_split <= self.whole_split_limit
        res = self._extract(split, None if whole else tuple(int(i) for i in index or ()), n_views)
        assert res.features is not None
        assert res.labels is not None
        feats, labels, vs = res.features, res.labels, res.views
        if whole and index is not None:
            idx = torch.as_tensor(list(index), dtype=torch.long)
            feats, labels = feats[idx], labels[idx]
            vs = vs[:, idx] if vs is not None else None
        return FeatureSet(feats, labels, vs if n_views else None)
