"""Zero-shot text weights from class names and prompt templates.

``text_weights(backbone, classnames, templates)`` builds the (C, D) zero-shot classifier with
:func:`fewclip.functional.text_classifier` semantics: each prompt ``template.format(name)`` (with
``_`` in class names turned into spaces) is encoded, every prompt embedding is L2-normalised,
the C x T embeddings are averaged over the T templates, and the mean is L2-normalised again.
The raw prompt embeddings can be cached in a :class:`~fewclip.features.FeatureStore`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from fewclip._version import __version__
from fewclip.backbones.base import Backbone
from fewclip.errors import InvalidValueError
from fewclip.features.store import STORE_FORMAT, FeatureStore, entry_key
from fewclip.functional import text_classifier

__all__ = [
    "Template",
    "encode_texts_cached",
    "prompt_embeddings",
    "prompts",
    "sentence_weights",
    "text_key_record",
    "text_weights",
]

Template = str | Callable[[str], str]
"""A prompt template: a string with one ``{}`` (``"a photo of a {}."``) or a callable."""


def prompts(classnames: Sequence[str], templates: Sequence[Template]) -> list[str]:
    """The C x T prompts, class-major: ``[t(c) for c in classnames for t in templates]``.

    ``_`` in class names becomes a space. Raises ``ValueError`` on empty inputs or a string
    template without exactly one ``{}``.
    """
    if isinstance(classnames, str) or not len(classnames):
        raise InvalidValueError(
            f"classnames: expected a non-empty list of names, found {classnames!r}"
        )
    if isinstance(templates, str) or not len(templates):
        raise InvalidValueError(
            f"templates: expected a non-empty list of templates, found {templates!r}"
        )
    for t in templates:
        if isinstance(t, str) and t.count("{}") != 1:
            raise InvalidValueError(
                f"templates: expected exactly one '{{}}' in each template, found {t!r}"
            )
    out = []
    for name in classnames:
        clean = str(name).replace("_", " ")
        for t in templates:
            out.append(t.format(clean) if isinstance(t, str) else t(clean))
    return out


def text_key_record(backbone: Backbone, texts: Sequence[str]) -> dict[str, object]:
    """Key record of a cached set of raw prompt embeddings."""
    digest = hashlib.sha256(json.dumps(list(texts)).encode()).hexdigest()
    return {
        "kind": "text",
        "format": STORE_FORMAT,
        "fewclip_version": __version__,
        "backbone": backbone.id,
        "precision": backbone.compute_precision,
        "prompts": digest,
        "n": len(texts),
        "dtype": "float32",
    }


def prompt_embeddings(
    backbone: Backbone,
    classnames: Sequence[str],
    templates: Sequence[Template],
    *,
    batch_size: int = 256,
    store: FeatureStore | str | os.PathLike | None = None,
) -> Tensor:
    """Raw (un-normalised) prompt embeddings, (C, T, D) float32 on CPU, optionally cached."""
    texts = prompts(classnames, templates)
    c, t = len(classnames), len(templates)
    return encode_texts_cached(backbone, texts, batch_size=batch_size, store=store).view(c, t, -1)


def encode_texts_cached(
    backbone: Backbone,
    texts: Sequence[str],
    *,
    batch_size: int = 256,
    store: FeatureStore | str | os.PathLike | None = None,
) -> Tensor:
    """Raw text embeddings (T, D), float32 on CPU; served from ``store`` when it has them."""
    texts = list(texts)
    if store is None:
        return backbone.encode_texts(texts, batch_size=batch_size).to("cpu")
    if isinstance(store, (str, os.PathLike)):
        store = FeatureStore(store)
    record = text_key_record(backbone, texts)
    key = entry_key(record)
    with store.lock([key]):
        try:
            problems = store.verify(key, full=True)
        except KeyError:
            problems = None  # not stored yet
        if problems is None or problems:
            started = time.monotonic()
            raw = backbone.encode_texts(texts, batch_size=batch_size).to("cpu")
            w = store.writer(
                key,
                record,
                n_rows=len(texts),
                dim=raw.shape[1],
                shard_size=max(1, len(texts)),
                meta={"backbone": backbone.describe(), "prompts": texts[:1000]},
            )
            w.invalidate()
            w.write_shard(0, raw)
            w.finalize()
            if problems:
                warnings.warn(
                    f"rebuilt the prompt embeddings {key[:12]} in {store.root}: {problems[0]}; "
                    f"{len(texts)} prompts encoded again in {time.monotonic() - started:.1f} s",
                    RuntimeWarning,
                    stacklevel=2,
                )
    return store.load(key, mmap=False)


def sentence_weights(
    backbone: Backbone,
    sentences: Sequence[Sequence[str]],
    *,
    batch_size: int = 256,
    store: FeatureStore | str | os.PathLike | None = None,
) -> Tensor:
    """Text classifier (C, D) from a list of sentences per class (any number per class).

    For class k with sentences s_1..s_m: ``normalise(mean_j normalise(E(s_j)))``, the same
    formula as :func:`text_weights`; this form takes per-class prompts (e.g. LLM-generated
    descriptions from a ``fewclip.data.PromptSet``).
    """
    counts = [len(s) for s in sentences]
    if not counts:
        raise InvalidValueError("sentences: expected one list of sentences per class, found none")
    empty = [k for k, n in enumerate(counts) if n == 0]
    if empty:
        raise InvalidValueError(f"sentences: classes {empty[:5]} have no sentences")
    flat = [str(x) for s in sentences for x in s]
    raw = encode_texts_cached(backbone, flat, batch_size=batch_size, store=store)
    raw = raw / raw.norm(dim=-1, keepdim=True)
    out = torch.stack([chunk.mean(dim=0) for chunk in raw.split(counts)])
    return out / out.norm(dim=-1, keepdim=True)


def text_weights(
    backbone: Backbone,
    classnames: Sequence[str],
    templates: Sequence[Template],
    *,
    batch_size: int = 256,
    store: FeatureStore | str | os.PathLike | None = None,
    device: str | torch.device | None = None,
) -> Tensor:
    """Zero-shot text classifier (C, D), float32, rows L2-normalised.

    ``text_classifier(prompt_embeddings(...))``: normalise each prompt embedding, mean over the
    templates, normalise again (``fewclip.functional.text_classifier``). Equal to open_clip's
    ``build_zero_shot_classifier(...).T`` for the same model, names and templates.

    Args:
        backbone: the model whose text encoder is used.
        classnames: C class names (``_`` becomes a space).
        templates: T templates, strings with one ``{}`` or callables.
        batch_size: prompts per text-encoder call.
        store: cache the raw prompt embeddings in this feature store.
        device: where the result goes (default: CPU).
    """
    raw = prompt_embeddings(backbone, classnames, templates, batch_size=batch_size, store=store)
    out = text_classifier(raw)
    return out if device is None else out.to(device)
