"""Real-data ``prepare`` for the benchmark runner: datasets on disk, backbones, the feature store.

``dataset_prepare(...)`` returns the ``prepare(dataset, backbone) -> Prepared`` callable that
``fewclip.bench.run_bench`` takes. Datasets are benchmark names (under ``root`` = ``$DATA``),
image folders or manifests; backbones are anything ``fewclip.backbones.load`` accepts.
Features come from a :class:`~fewclip.features.source.DatasetSource`, so each image is encoded
once per backbone and every cell reuses it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fewclip.adapter import class_weights
from fewclip.backbones.base import Backbone, text_tower_of
from fewclip.bench.runner import Prepared
from fewclip.features.source import DatasetSource
from fewclip.features.store import FeatureStore

__all__ = ["dataset_prepare"]


def dataset_prepare(
    *,
    root: str | os.PathLike[str] | None,
    store: FeatureStore | str | os.PathLike[str] | None,
    prompts: str = "default",
    views: int = 10,
    view_seed: int = 0,
    device: str = "cpu",
    precision: str = "amp",
    pretrained: str | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool | None = None,
    load_backbone: Callable[[str], Backbone] | None = None,
    skip_bad: bool = False,
) -> Callable[[str, str], Prepared]:
    """A ``prepare(dataset, backbone)`` over real images (see the module docstring).

    With ``skip_bad``, every split's undecodable images are found while preparing and left out
    (``DatasetSource(skip_bad=True)``); each row's ``data.skipped_images`` lists them, and they
    are part of the dataset fingerprint.

    ``load_backbone(name)`` overrides how backbones are loaded (default:
    ``fewclip.backbones.load(name, pretrained=..., device=..., precision=...)``); loaded
    backbones are kept for the next dataset.
    """
    from fewclip import data as fdata

    fs = FeatureStore(store) if isinstance(store, (str, os.PathLike)) else store
    backbones: dict[str, Backbone] = {}

    def get_backbone(name: str) -> Backbone:
        if name not in backbones:
            if load_backbone is not None:
                backbones[name] = load_backbone(name)
            else:
                import fewclip.backbones as fb

                backbones[name] = fb.load(
                    name, pretrained=pretrained, device=device, precision=precision
                )
        return backbones[name]

    def prepare(dataset: str, backbone: str) -> Prepared:
        ds = fdata.load(dataset, root)
        bb = get_backbone(backbone)
        source = DatasetSource(
            ds,
            bb,
            store=fs,
            views=views,
            view_seed=view_seed,
            batch_size=batch_size,
            num_workers=num_workers,
            progress=progress,
            skip_bad=skip_bad,
        )
        if skip_bad:
            for split in ds.splits:
                source.labels(split)  # finds and hides the split's bad images now
        skipped = source.skipped_images()
        weights, pset = class_weights(bb, ds.classnames, prompts, dataset=ds.name, store=fs)
        h = hashlib.sha256()
        for split in sorted(ds.splits):
            h.update(f"{split}:{ds.split(split).fingerprint()}\n".encode())
        h.update(f"backbone:{bb.id}\nviews:{views}:{view_seed}\nprecision:{precision}".encode())
        for rec in skipped:
            h.update(f"\nskipped:{rec['split']}:{rec['path']}".encode())
        meta: dict[str, Any] = {
            "prompts": pset.name,
            "prompts_sha256": pset.fingerprint(),
            "n_views": views,
            "view_seed": view_seed,
            "precision": precision,
            "backbone_id": bb.id,
            "dataset": source.dataset.summary(),
            "skipped_images": skipped,
        }
        if Path(dataset).expanduser().exists():
            meta["path"] = str(Path(dataset).expanduser().resolve())
        toy = bb.name.startswith("fewclip-tiny")
        ids = ds.meta.get("imagenet_index")  # the ImageNet family: ImageNet-1k class ids
        class_ids = [int(i) for i in ids] if ids and min(ids) >= 0 else None
        return Prepared(
            class_ids=class_ids,
            text_tower=text_tower_of(bb),
            toy=toy,
            backbone_note=f"{bb.name}: tiny model with random, untrained weights" if toy else None,
            source=source,
            classnames=list(ds.classnames),
            text_weights=weights,
            fingerprint=h.hexdigest(),
            meta=meta,
        )

    return prepare
