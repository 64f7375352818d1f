"""Adapters: a fitted method together with everything needed to use it on new images.

An adapter folder is a method folder (``config.json`` + ``state.safetensors``, written by
``Method.save``) plus ``adapter.json``, which records:

- ``backbone``: the name and weights it was loaded with, and its ``id`` (architecture, weights
  and preprocessing); :meth:`Adapter.load_backbone` refuses a backbone whose id differs;
- ``classnames``, ``prompts`` (the prompt set in full), the method's hyper-parameters and the
  selected ones, ``protocol`` and ``draw`` (the split plan: support and validation rows, seed),
  ``dataset`` (name, root, split sizes), ``views``, the fewclip version and the time.

This module connects the image world and the feature world: it holds no method logic.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fewclip import methods
from fewclip._version import __version__
from fewclip.backbones.base import Backbone, text_tower_of
from fewclip.data.prompts import PromptSet, get_prompts
from fewclip.data.types import Dataset
from fewclip.errors import DamagedFileError, FewclipError, InvalidValueError, MissingFileError
from fewclip.features.extract import extract
from fewclip.features.source import DatasetSource
from fewclip.features.store import FeatureStore
from fewclip.imageio import ImageSource
from fewclip.methods.base import (
    ADAPTER_FILE,
    CONFIG_FILE,
    OWN_FILES,
    REFIT_HINT,
    Method,
    describe_saved,
    file_not_folder_message,
)
from fewclip.metrics import classification_report
from fewclip.outputs import check_folder
from fewclip.protocol import Protocol, SplitPlan, build_task
from fewclip.text import sentence_weights

__all__ = [
    "ADAPTER_FILE",
    "Adapter",
    "AdapterError",
    "BackboneMismatchError",
    "Prediction",
    "choose_defaults",
    "class_weights",
    "evaluate_model",
    "fit_adapter",
]

_FORMAT = "fewclip-adapter/1"


class AdapterError(FewclipError, ValueError):
    """A folder is not a valid adapter."""


class BackboneMismatchError(FewclipError, ValueError):
    """The backbone offered to an adapter is not the one it was fitted with."""


def _record_digest(record: Mapping[str, Any]) -> str:
    """SHA-256 of an adapter record without its ``checksums`` (canonical JSON: sorted keys)."""
    body = {k: v for k, v in record.items() if k != "checksums"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _check_checksums(folder: Path, record: Mapping[str, Any]) -> None:
    """Check the SHA-256 digests ``adapter.json`` records: of itself (canonical JSON) and of
    ``config.json`` (which holds the digest of ``state.safetensors`` in turn). Adapters saved
    before fewclip recorded them are read unchecked."""
    sums = record.get("checksums")
    if sums is None:
        return
    rec_path = folder / ADAPTER_FILE
    if not isinstance(sums, dict):
        raise DamagedFileError(f"{rec_path}: 'checksums' is not a JSON object; {REFIT_HINT}")
    if sums.get(ADAPTER_FILE) != _record_digest(record):
        raise DamagedFileError(
            f"{rec_path}: checksum mismatch: the record changed after it was saved; {REFIT_HINT}"
        )
    config = folder / CONFIG_FILE
    try:
        got = hashlib.sha256(config.read_bytes()).hexdigest()
    except FileNotFoundError:
        raise DamagedFileError(f"{config}: missing; {REFIT_HINT}") from None
    if sums.get(CONFIG_FILE) != got:
        raise DamagedFileError(
            f"{config}: checksum mismatch ({ADAPTER_FILE} recorded another SHA-256): the file "
            f"changed after it was saved; {REFIT_HINT}"
        )


def _check_record(rec_path: Path, info: Mapping[str, Any], method: Method) -> None:
    """``adapter.json`` must agree with the method folder it sits in: same method, same class
    names in the same order."""
    config = rec_path.parent / CONFIG_FILE
    if info.get("method", method.name) != method.name:
        raise DamagedFileError(
            f"{rec_path}: records method {info.get('method')!r}, but {config} holds "
            f"{method.name!r}; {REFIT_HINT}"
        )
    names = info.get("classnames")
    if names is not None and list(names) != method.classnames_:
        raise DamagedFileError(
            f"{rec_path}: its {len(names)} class names differ from the {len(method.classnames_)} "
            f"of {config}; {REFIT_HINT}"
        )


def class_weights(
    backbone: Backbone,
    classnames: Sequence[str],
    prompts: str | os.PathLike[str] | PromptSet = "default",
    *,
    dataset: str | None = None,
    store: FeatureStore | str | os.PathLike[str] | None = None,
) -> tuple[Tensor, PromptSet]:
    """The zero-shot text classifier (C, D) of ``classnames`` under a prompt set, and the set.

    ``prompts`` is anything ``fewclip.data.get_prompts`` accepts (``"default"`` picks the
    references' choice for a benchmark ``dataset``).
    """
    pset = get_prompts(prompts, dataset)
    weights = sentence_weights(backbone, pset.sentences(list(classnames)), store=store)
    return weights, pset


@dataclass(frozen=True)
class Prediction:
    """Top-k classes of one image: ``labels`` (class ids), ``names`` and ``probs``; for an
    image that could not be decoded, empty lists and the reason in ``error``."""

    image: str
    labels: list[int]
    names: list[str]
    probs: list[float]
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"image": self.image, "error": self.error}
        return {
            "image": self.image,
            "top": [
                {"label": y, "class": n, "prob": p}
                for y, n, p in zip(self.labels, self.names, self.probs, strict=True)
            ],
        }


@dataclass
class Adapter:
    """A fitted ``method`` and the record ``info`` (see the module docstring)."""

    method: Method
    info: dict[str, Any] = field(default_factory=dict)
    sha256: str | None = field(default=None, compare=False)
    """SHA-256 of the ``adapter.json`` it was loaded from (which records the digests of the
    method's files in turn), ``None`` for an adapter not read from disk."""

    @property
    def classnames(self) -> list[str]:
        return list(self.method.classnames_)

    @property
    def backbone_id(self) -> str:
        return str(self.info.get("backbone", {}).get("id", ""))

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the adapter folder (the method's files and ``adapter.json``) in one atomic step.

        The folder must be new or empty; an adapter or method folder that fewclip wrote is
        replaced only with ``overwrite=True``; a folder holding anything else is refused
        (``fewclip.errors.OutputFolderError``, nothing written): see ``fewclip.outputs``.
        """
        record = json.loads(json.dumps({"format": _FORMAT, **self.info}, default=str))
        record.pop("checksums", None)

        def add_record(tmp: Path) -> None:
            config = hashlib.sha256((tmp / CONFIG_FILE).read_bytes()).hexdigest()
            checksums = {ADAPTER_FILE: _record_digest(record), CONFIG_FILE: config}
            (tmp / ADAPTER_FILE).write_text(
                json.dumps({**record, "checksums": checksums}, indent=2)
            )

        return self.method._save(path, overwrite=overwrite, extra=add_record, what="adapter")

    @staticmethod
    def check_target(path: str | os.PathLike[str], *, overwrite: bool = False) -> str | None:
        """What :meth:`save` would replace at ``path`` (``None``: nothing), or the
        ``OutputFolderError`` it would raise; writes nothing (call it before a long fit)."""
        return check_folder(
            path, own_files=OWN_FILES, owner=describe_saved, overwrite=overwrite, what="adapter"
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Adapter:
        """Read an adapter folder written by :meth:`save` (never pickle)."""
        p = Path(path)
        if not p.exists():
            raise MissingFileError(f"{p}: no such adapter folder")
        rec_path = p / ADAPTER_FILE
        if p.is_file():
            raise AdapterError(
                file_not_folder_message(
                    p, f"an adapter folder (with {ADAPTER_FILE}) written by `fewclip fit`"
                )
            )
        if not rec_path.is_file():
            raise AdapterError(
                f"{p}: no {ADAPTER_FILE}; this is not an adapter folder written by `fewclip fit` "
                "(a bare method folder loads with fewclip.methods.load)"
            )
        raw = rec_path.read_bytes()
        try:
            info = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DamagedFileError(f"{rec_path}: not valid JSON ({e}); {REFIT_HINT}") from None
        if not isinstance(info, dict) or info.get("format") != _FORMAT:
            raise AdapterError(f"{rec_path}: not a fewclip adapter record (format {_FORMAT!r})")
        _check_checksums(p, info)
        if not isinstance(info.get("backbone"), dict) or "id" not in info["backbone"]:
            raise DamagedFileError(f"{rec_path}: the record names no backbone id; {REFIT_HINT}")
        info.pop("format")
        info.pop("checksums", None)
        method = methods.load(p)
        _check_record(rec_path, info, method)
        return cls(method, info, sha256=hashlib.sha256(raw).hexdigest())

    def load_backbone(
        self,
        *,
        name: str | None = None,
        pretrained: str | None = None,
        device: str | torch.device = "cpu",
        precision: str = "amp",
    ) -> Backbone:
        """Load the backbone the adapter was fitted with (or ``name``/``pretrained`` instead,
        e.g. the same weights at another path) and check that its id matches. A method that
        scores through the text tower (CoCoOp) gets the backbone's tower here."""
        import fewclip.backbones as fb

        rec = self.info["backbone"]
        bb = fb.load(
            name or rec["name"],
            pretrained=pretrained if pretrained is not None else rec.get("pretrained"),
            device=device,
            precision=precision,
        )
        self.check_backbone(bb)
        self._attach_text_tower(bb)
        return bb

    def _attach_text_tower(self, backbone: Backbone) -> None:
        """Give the method the backbone's text tower when its scores need one
        (``Method.predicts_with_text_tower``) and it has none yet."""
        if not self.method.predicts_with_text_tower or self.method.can_score:
            return
        tower = text_tower_of(backbone)
        if tower is None:
            raise AdapterError(
                f"{self.method.name} scores each image through the text encoder, and backbone "
                f"{backbone.name!r} offers none (an open_clip backbone does)"
            )
        self.method.attach_text_tower(tower)

    def check_backbone(self, backbone: Backbone) -> None:
        """Raise :class:`BackboneMismatchError` unless ``backbone.id`` is the adapter's."""
        if backbone.id != self.backbone_id:
            rec = self.info["backbone"]
            raise BackboneMismatchError(
                f"backbone {backbone.name!r} has id {backbone.id}, but the adapter was fitted on "
                f"{rec.get('name')!r} (pretrained={rec.get('pretrained')!r}) with id "
                f"{self.backbone_id}: different architecture, weights or preprocessing give "
                "different features, so its predictions would be meaningless"
            )

    def predict_images(
        self,
        backbone: Backbone,
        images: Sequence[ImageSource],
        *,
        top_k: int = 5,
        batch_size: int = 64,
        num_workers: int = 0,
        progress: bool | None = None,
        skip_bad: bool = False,
    ) -> list[Prediction]:
        """Top-k predictions with probabilities (``method.predict_proba``) for each image.

        Undecodable images raise one ``BadImageError`` that lists every bad file; with
        ``skip_bad`` they get a ``Prediction`` of their own whose ``error`` says why, so the
        result has one entry per input image, in input order.
        """
        if top_k < 1:
            raise InvalidValueError(f"top_k: expected a positive integer, found {top_k}")
        self.check_backbone(backbone)
        self._attach_text_tower(backbone)
        images = list(images)
        res = extract(
            backbone,
            images,
            batch_size=batch_size,
            num_workers=num_workers,
            progress=progress,
            skip_bad=skip_bad,
        )
        assert res.features is not None
        if not images:
            return []
        n_classes = len(self.classnames)
        probs = (
            self.method.predict_proba(res.features).cpu()
            if len(res.index)
            else torch.empty(0, n_classes)
        )
        top = probs.topk(min(top_k, n_classes), dim=1)
        names = self.classnames
        row = {int(i): r for r, i in enumerate(res.index.tolist())}
        errors = dict(zip(res.bad_index, res.bad_files, strict=True))
        out = []
        for i, src in enumerate(images):
            label = str(src) if isinstance(src, (str, os.PathLike)) else f"<image {i}>"
            if i in errors:
                out.append(Prediction(label, [], [], [], error=errors[i].reason))
                continue
            ids = top.indices[row[i]].tolist()
            out.append(
                Prediction(
                    image=label,
                    labels=ids,
                    names=[names[j] for j in ids],
                    probs=[float(p) for p in top.values[row[i]]],
                )
            )
        return out


def choose_defaults(
    dataset: Dataset, shots: int | str | None, protocol: str | None, *, val_shots: int = 4
) -> tuple[int | str, str, str]:
    """The shots and protocol to use when the user left either unset, and why (one sentence).

    A benchmark keeps the papers' setting: 16 shots, ``fewshot-val``. For one's own images the
    choice of an experienced practitioner: every training image (``"all"``), validated on the
    dataset's own val split when it has one with every class in it (``full-val``), else on a
    few-shot hold-out from train when every class can spare images (``fewshot-val``), else no
    validation (``val-free``: the methods' fixed defaults).
    """
    from collections import Counter

    from fewclip.data.benchmarks import benchmark_names
    from fewclip.sampling import ALL, VAL_EVERY

    if shots is not None and protocol is not None:
        return shots, protocol, ""
    if dataset.name in benchmark_names():
        k = 16 if shots is None else shots
        return k, protocol or "fewshot-val", "the papers' setting for a benchmark"
    counts = Counter(dataset.split("train").labels).values() if dataset.has_split("train") else []
    lo, hi = (min(counts), max(counts)) if counts else (0, 0)
    k = ALL if shots is None else shots
    spread = f"{lo}" if lo == hi else f"{lo}–{hi}"
    why = [f"every training image ({spread} per class)" if k == ALL else f"{k} shots"]
    if protocol is None:
        val_classes = set(dataset.split("val").labels) if dataset.has_split("val") else set()
        if len(val_classes) == dataset.n_classes:  # every class can be validated on
            protocol = "full-val"
            why.append(f"validated on the folder's val split ({len(dataset.split('val'))} images)")
        elif (
            (lo >= VAL_EVERY) if k == ALL else (isinstance(k, int) and lo >= k + min(k, val_shots))
        ):
            protocol = "fewshot-val"
            why.append("validated on images held out of train")
        else:
            protocol = "val-free"
            why.append(
                "no validation (too few images per class to hold some out), so the methods' "
                "fixed default hyper-parameters"
            )
    return k, protocol, "; ".join(why)


def fit_adapter(
    method: str | Method,
    dataset: Dataset,
    backbone: Backbone,
    *,
    shots: int | str,
    seed: int = 1,
    protocol: str | Protocol = "fewshot-val",
    params: Mapping[str, Any] | None = None,
    prompts: str | os.PathLike[str] | PromptSet = "default",
    views: int = 10,
    store: FeatureStore | str | os.PathLike[str] | None = None,
    source: DatasetSource | None = None,
    backbone_spec: Mapping[str, Any] | None = None,
    progress: bool | None = None,
    skip_bad: bool = False,
) -> tuple[Adapter, SplitPlan, DatasetSource]:
    """Fit ``method`` on ``dataset`` at ``shots`` per class (``"all"``: every training image)
    under ``protocol``.

    Draws the support (and validation) rows with ``seed``, which also seeds a method that
    takes a ``seed`` (as every bench cell does) unless ``params`` sets one; extracts only what
    the plan needs through the store, fits, and returns the adapter, the plan and the feature
    source (reuse it to evaluate without re-reading anything). ``backbone_spec`` records how
    to load the backbone again (``{"name": ..., "pretrained": ...}``; default: its name). With
    ``skip_bad``,
    undecodable images are left out before the draw and listed in ``info["skipped_images"]``.
    """
    proto = protocol if isinstance(protocol, Protocol) else Protocol(protocol)
    if source is None:
        source = DatasetSource(
            dataset, backbone, store=store, views=views, progress=progress, skip_bad=skip_bad
        )
    weights, pset = class_weights(
        backbone, dataset.classnames, prompts, dataset=dataset.name, store=source.store
    )
    plan = proto.plan_source(source, shots=shots, seed=seed, classnames=dataset.classnames)
    task = build_task(
        plan,
        source,
        classnames=dataset.classnames,
        text_weights=weights,
        meta={"dataset": dataset.name, "backbone": backbone.id},
        text_tower=text_tower_of(backbone),
    )
    if isinstance(method, str):
        model = methods.create(method, **methods.run_params(method, params, seed=seed))
    else:
        model = method
    t0 = time.perf_counter()
    model.fit(task)
    fit_seconds = time.perf_counter() - t0
    spec = dict(backbone_spec or {"name": backbone.name, "pretrained": None})
    spec.update(id=backbone.id, family=backbone.family, embed_dim=backbone.embed_dim)
    from fewclip.protocol import _json_params

    info = {
        "backbone": spec,
        "classnames": list(dataset.classnames),
        "prompts": pset.to_dict(),
        "method": model.name,
        "params": _json_params(model),
        "protocol": plan.protocol,
        "leaky": plan.leaky,
        "draw": plan.to_dict(),
        "dataset": source.dataset.summary(),
        "skipped_images": source.skipped_images(),
        "views": source.views,
        "view_seed": source.view_seed,
        "fit_seconds": round(fit_seconds, 3),
        "fewclip_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return Adapter(model, info), plan, source


def evaluate_model(
    model: Method,
    source: DatasetSource,
    *,
    split: str = "test",
    k: int = 5,
) -> dict[str, Any]:
    """Top-1, top-k, per-class and macro accuracy of a fitted model on ``split`` of the
    source's dataset (the evaluation step: the one place a test split is read)."""
    test = source.features(split, None, views=False)
    logits = model.logits(test.features)
    return classification_report(logits, test.labels, list(source.dataset.classnames), k=k)
