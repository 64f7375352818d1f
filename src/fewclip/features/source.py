"""A :class:`~fewclip.protocol.FeatureSource` over a dataset of images and a backbone.

``DatasetSource(dataset, backbone, store=...)`` answers ``labels(split)`` from the dataset alone
and ``features(split, index, views=...)`` by extracting through the feature store, so each
image is encoded once and every method, seed and shot count reuses it:

- splits up to ``whole_split_limit`` images are extracted whole (one store entry per view) and
  indexed, so every draw of every seed hits the same entries;
- larger splits (ImageNet's 1.28 M training images) are extracted only for the rows a plan asks
  for; the entry is keyed by exactly those images, so repeating a draw is still free.

The source never reads a split it is not asked for; the protocol decides what it is asked for.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from fewclip.backbones.base import Backbone
from fewclip.data.types import Dataset, ImageList
from fewclip.features.extract import ExtractResult, extract
from fewclip.features.store import FeatureStore
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
    ) -> None:
        if views < 0:
            raise ValueError(f"views: expected a non-negative number, found {views}")
        self.dataset = dataset
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
        return torch.tensor(self.dataset.split(split).labels, dtype=torch.long)

    def _images(self, lst: ImageList) -> list[Any]:
        if lst.loader is not None:
            return [lst.open(i) for i in range(len(lst))]
        return [str(p) for p in lst.abspaths()]

    def _extract(self, split: str, index: tuple[int, ...] | None, views: int) -> ExtractResult:
        memo_key = (split, index, views)
        if memo_key in self._memo:
            return self._memo[memo_key]
        lst = self.dataset.split(split)
        if index is not None:
            lst = lst.subset(index)
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
        )
        self.n_encoded += res.n_encoded
        self._memo[memo_key] = res
        return res

    def features(
        self, split: str, index: Sequence[int] | None = None, *, views: bool = False
    ) -> FeatureSet:
        """Raw features (and, with ``views``, the augmented views) of ``split`` rows ``index``
        (all rows when ``None``), in that order."""
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
