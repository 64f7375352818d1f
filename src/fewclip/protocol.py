"""Which split may be used for what: the evaluation protocol, built so that a leak cannot happen
by accident.

The flow has three steps and only the last one reads test features:

1. ``Protocol(name).plan(...)`` (or ``plan_splits``) turns labels into a ``SplitPlan``: which
   indices of which split form the support set and the validation set. It needs labels only.
2. ``build_task(plan, source, classnames=..., text_weights=...)`` loads the support and
   validation features from a ``FeatureSource`` and returns the ``Task`` that methods are
   fitted on. It refuses to read the ``test`` split unless the protocol is ``oracle-test``.
3. ``evaluate(model, source, plan)`` is the one place that reads test features; it returns an
   ``EvalResult`` that carries the protocol name and ``leaky``.

Protocols (DESIGN.md):

=============== ===================================================================== =======
name            validation set (hyper-parameters, epochs)                             leaky
=============== ===================================================================== =======
``fewshot-val`` min(K, 4) per class from **train**, disjoint from the support set      no
``coop-val``    min(K, 4) per class from the **val** split, CoOp's stream              no
``full-val``    the whole **val** split (Tip-Adapter's behaviour on 10 datasets)       no
``val-free``    none: fixed hyper-parameters                                           no
``oracle-test`` the **test** split (the papers' ImageNet numbers)                      LEAKY
=============== ===================================================================== =======

The support set is the same in every protocol: ``sample_few_shot(train_labels, K, seed)``, the
references' draw image for image.

A ``FeatureSource`` is anything with ``labels(split)`` and ``features(split, index, views=...)``
(and optionally ``splits()``); ``InMemorySource`` wraps ready ``FeatureSet`` objects, and the
feature store can implement the same two methods to encode only what a plan asks for.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, runtime_checkable
from typing import Protocol as _TypingProtocol

import torch
from torch import Tensor

from fewclip.errors import FewclipError, InvalidTypeError, InvalidValueError, NotFoundError
from fewclip.sampling import (
    ALL,
    all_val_count,
    check_shots,
    draw_all,
    draw_coop,
    draw_fewshot_val,
    draw_support,
    sample_few_shot,
)
from fewclip.task import FeatureSet, Task
from fewclip.text_tower import TextTower

__all__ = [
    "LEAKY",
    "PROTOCOLS",
    "EvalResult",
    "FeatureSource",
    "InMemorySource",
    "Protocol",
    "SplitPlan",
    "SplitRef",
    "TestSetAccessError",
    "build_task",
    "evaluate",
    "plan_splits",
    "run",
]

#: The protocol names, default first.
PROTOCOLS: tuple[str, ...] = ("fewshot-val", "coop-val", "full-val", "val-free", "oracle-test")

#: The mark every output produced under ``oracle-test`` carries.
LEAKY = "LEAKY"

_DESCRIPTIONS = {
    "fewshot-val": "min(K, val_shots) per class from train, disjoint from the support set",
    "coop-val": "min(K, 4) per class from the val split (CoOp's draw)",
    "full-val": "the whole val split",
    "val-free": "no validation set; fixed hyper-parameters",
    "oracle-test": "validation = test set (reproduction only; results are LEAKY)",
}


class TestSetAccessError(FewclipError, RuntimeError):
    """Something other than evaluation (or an ``oracle-test`` plan) asked for test features."""

    __test__ = False  # not a pytest test class


@runtime_checkable
class FeatureSource(_TypingProtocol):
    """Where features come from: the feature store, precomputed tensors, a synthetic world.

    ``labels(split)`` returns the class ids of the whole split (cheap; used for planning).
    ``features(split, index, views=...)`` returns the raw features of rows ``index`` (all rows
    when ``None``) in that order, with their augmented views when ``views`` is true and the
    source has them.
    """

    def labels(self, split: str) -> Sequence[int] | Tensor: ...

    def features(
        self, split: str, index: Sequence[int] | None = None, *, views: bool = False
    ) -> FeatureSet: ...


class InMemorySource:
    """A ``FeatureSource`` over ready ``FeatureSet`` objects, one per split name."""

    def __init__(self, splits: Mapping[str, FeatureSet] | None = None, **kw: FeatureSet) -> None:
        merged = dict(splits or {})
        merged.update(kw)
        for k, v in merged.items():
            if not isinstance(v, FeatureSet):
                raise InvalidTypeError(
                    f"split {k!r}: expected a FeatureSet, found {type(v).__name__}"
                )
        self._splits = merged

    def splits(self) -> list[str]:
        return list(self._splits)

    def _get(self, split: str) -> FeatureSet:
        try:
            return self._splits[split]
        except KeyError:
            raise NotFoundError(
                f"feature source has no {split!r} split (has: {', '.join(self._splits)})"
            ) from None

    def labels(self, split: str) -> Tensor:
        return self._get(split).labels

    def features(
        self, split: str, index: Sequence[int] | None = None, *, views: bool = False
    ) -> FeatureSet:
        fs = self._get(split)
        if index is not None:
            fs = fs.subset(list(index))
        if not views and fs.views is not None:
            fs = FeatureSet(fs.features, fs.labels, None)
        return fs


def _has_split(source: Any, split: str) -> bool:
    splits = getattr(source, "splits", None)
    if callable(splits):
        return split in splits()
    try:
        source.labels(split)
    except (KeyError, ValueError, FileNotFoundError):
        return False
    return True


def _labels_list(labels: Any) -> list[int]:
    if isinstance(labels, Tensor):
        return [int(v) for v in labels.tolist()]
    if hasattr(labels, "tolist"):
        return [int(v) for v in labels.tolist()]
    return [int(v) for v in labels]


@dataclass(frozen=True)
class SplitRef:
    """Rows of one split: ``indices`` (in order; ``None`` = the whole split)."""

    split: str
    indices: tuple[int, ...] | None = None

    def __len__(self) -> int:
        if self.indices is None:
            raise InvalidTypeError(
                "SplitRef covers a whole split; its length is the split's length"
            )
        return len(self.indices)

    def to_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "indices": None if self.indices is None else list(self.indices),
        }


@dataclass(frozen=True)
class SplitPlan:
    """Which rows form the support and validation sets under a protocol.

    Invariants (checked): the support comes from ``train``; only ``oracle-test`` may take its
    validation set from ``test``; ``leaky`` is true exactly for ``oracle-test``.
    """

    protocol: str
    shots: int | str  # K, or ALL ("all": every training image of each class)
    seed: int
    support: SplitRef
    val: SplitRef | None
    leaky: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise InvalidValueError(
                f"protocol: expected one of {PROTOCOLS}, found {self.protocol!r}"
            )
        if self.support.split != "train":
            raise InvalidValueError(f"support must come from 'train', found {self.support.split!r}")
        if self.val is not None and self.val.split == "test" and self.protocol != "oracle-test":
            raise TestSetAccessError(
                f"protocol {self.protocol!r} may not validate on the test split; only "
                "'oracle-test' may (and its results are marked LEAKY)"
            )
        if self.leaky != (self.protocol == "oracle-test"):
            raise InvalidValueError(
                f"leaky must be {self.protocol == 'oracle-test'} for protocol {self.protocol!r}"
            )

    @property
    def mark(self) -> str:
        """``"LEAKY"`` for ``oracle-test``, else ``""``."""
        return LEAKY if self.leaky else ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "leaky": self.leaky,
            "mark": self.mark,
            "shots": self.shots,
            "seed": self.seed,
            "support": self.support.to_dict(),
            "val": None if self.val is None else self.val.to_dict(),
            "meta": dict(self.meta),
        }


@dataclass(frozen=True)
class Protocol:
    """An evaluation protocol.

    Attributes:
        name: one of ``PROTOCOLS`` (default ``fewshot-val``).
        val_shots: validation images per class are ``min(K, val_shots)`` for ``fewshot-val``
            (``coop-val`` is fixed at CoOp's 4).
        repeat: draw support shots with replacement for classes with fewer than K images
            (Tip-Adapter's ``repeat=True``); not for ``coop-val``.
        allow_fewer: take all images of classes with fewer than K (CoOp's lenient behaviour)
            instead of raising ``NotEnoughImagesError``.
    """

    name: str = "fewshot-val"
    val_shots: int = 4
    repeat: bool = False
    allow_fewer: bool = False

    def __post_init__(self) -> None:
        if self.name not in PROTOCOLS:
            raise InvalidValueError(
                f"protocol: expected one of {', '.join(PROTOCOLS)}, found {self.name!r}"
            )
        if self.name == "coop-val" and self.repeat:
            raise InvalidValueError(
                "coop-val draws without replacement (CoOp); repeat must be False"
            )
        if isinstance(self.val_shots, bool) or not isinstance(self.val_shots, int):
            raise InvalidTypeError(f"val_shots: expected an int, found {self.val_shots!r}")
        if self.val_shots < 1:
            raise InvalidValueError(f"val_shots: expected ≥ 1, found {self.val_shots}")

    @property
    def leaky(self) -> bool:
        return self.name == "oracle-test"

    @property
    def description(self) -> str:
        return _DESCRIPTIONS[self.name]

    def plan(
        self,
        train_labels: Any,
        *,
        shots: int | str,
        seed: int,
        val_labels: Any | None = None,
        n_test: int | None = None,
        classnames: Sequence[str] | None = None,
    ) -> SplitPlan:
        """Plan the support and validation rows from labels alone.

        Args:
            train_labels: class ids of the whole training split (support and, for
                ``fewshot-val``, validation are drawn from it).
            shots: K images per class, or ``"all"`` (``fewclip.sampling.ALL``): every
                training image of each class, uneven classes allowed. Under ``fewshot-val``
                "all" holds out ``min(val_shots, n // 5)`` images of a class of n for
                validation (``draw_all``); under ``coop-val`` the validation set is
                min(4, n) images per class of the val split.
            seed: the draw's seed (CoOp: 1, 2, 3; Tip-Adapter: 1).
            val_labels: class ids of the val split (``coop-val`` and ``full-val`` need it).
            n_test: size of the test split (``oracle-test`` needs it; nothing else reads it).
            classnames: when given, every class must have training images (named if not).
        """
        name = self.name
        tl = _labels_list(train_labels)
        fewer = self.allow_fewer
        meta: dict[str, Any] = {"description": self.description}
        val: SplitRef | None
        if shots == ALL:
            return self._plan_all(tl, seed, val_labels, n_test, classnames, meta)
        if isinstance(shots, str):
            raise InvalidValueError(f"shots: expected a positive integer or 'all', found {shots!r}")
        if name == "fewshot-val":
            support, vidx = draw_fewshot_val(
                tl,
                shots,
                seed=seed,
                val_shots=self.val_shots,
                repeat=self.repeat,
                classnames=classnames,
                allow_fewer=fewer,
            )
            val = SplitRef("train", tuple(vidx))
            meta.update(sampler="sample_fewshot_val", val_shots=min(shots, self.val_shots))
        elif name == "coop-val":
            support, vidx = draw_coop(
                tl,
                _val_split_labels(name, val_labels, classnames),
                shots,
                seed=seed,
                classnames=classnames,
                allow_fewer=fewer,
            )
            val = SplitRef("val", tuple(vidx))
            meta.update(sampler="sample_coop", val_shots=min(shots, 4))
        else:
            support = draw_support(
                tl, shots, seed=seed, repeat=self.repeat, classnames=classnames, allow_fewer=fewer
            )
            meta.update(sampler="sample_few_shot")
            if name == "full-val":
                _val_split_labels(name, val_labels, classnames)
                val = SplitRef("val", None)
            elif name == "val-free":
                val = None
            else:  # oracle-test
                val = _whole_test_split(n_test)
        meta["repeat"] = self.repeat
        return SplitPlan(
            name, shots, seed, SplitRef("train", tuple(support)), val, self.leaky, meta
        )

    def _plan_all(
        self,
        tl: list[Any],
        seed: int,
        val_labels: Any | None,
        n_test: int | None,
        classnames: Sequence[str] | None,
        meta: dict[str, Any],
    ) -> SplitPlan:
        """``plan`` with ``shots="all"`` (see ``plan``)."""
        name = self.name
        val: SplitRef | None = None
        if name == "fewshot-val":
            support, vidx = draw_all(tl, seed=seed, val_shots=self.val_shots, classnames=classnames)
            val = SplitRef("train", tuple(vidx))
            held = [all_val_count(n, self.val_shots) for n in Counter(tl).values()]
            meta.update(sampler="draw_all", val_per_class=[min(held), max(held)])
        else:
            support, _ = draw_all(tl, seed=seed, classnames=classnames)
            meta.update(sampler="all")
            if name == "coop-val":
                vl = _val_split_labels(name, val_labels, classnames)
                val = SplitRef("val", tuple(sample_few_shot(vl, 4, seed=seed)))
            elif name == "full-val":
                _val_split_labels(name, val_labels, classnames)
                val = SplitRef("val", None)
            elif name == "oracle-test":
                val = _whole_test_split(n_test)
        counts = Counter(tl).values()
        meta.update(repeat=False, train_per_class=[min(counts), max(counts)])
        return SplitPlan(name, ALL, seed, SplitRef("train", tuple(support)), val, self.leaky, meta)

    def plan_source(
        self,
        source: FeatureSource,
        *,
        shots: int | str,
        seed: int,
        classnames: Sequence[str] | None = None,
    ) -> SplitPlan:
        """``plan`` with the labels a ``FeatureSource`` reports (test labels only for
        ``oracle-test``, and then only their number)."""
        needs_val = self.name in ("coop-val", "full-val")
        if needs_val and not _has_split(source, "val"):
            raise InvalidValueError(no_val_message(self.name))
        return self.plan(
            source.labels("train"),
            shots=shots,
            seed=seed,
            val_labels=source.labels("val") if needs_val else None,
            n_test=len(_labels_list(source.labels("test"))) if self.leaky else None,
            classnames=classnames,
        )


def _val_split_labels(
    protocol: str, val_labels: Any | None, classnames: Sequence[str] | None
) -> list[int]:
    """The val split's labels, for a protocol that validates on it: present, not empty, and
    (with ``classnames``) holding every class."""
    if val_labels is None:
        raise InvalidValueError(no_val_message(protocol))
    vl = _labels_list(val_labels)
    if not vl:
        raise InvalidValueError(f"{protocol}: the val split is empty")
    check_shots(vl, 1, classnames=classnames, where="val")
    return vl


def _whole_test_split(n_test: int | None) -> SplitRef:
    """The validation set of an ``oracle-test`` plan: the whole test split, whose size the
    caller must know."""
    if n_test is None or n_test < 1:
        raise InvalidValueError("oracle-test: n_test (the size of the test split) is needed")
    return SplitRef("test", None)


def no_val_message(protocol: str, dataset: str | None = None) -> str:
    who = f"{dataset} has" if dataset else "the source has"
    return (
        f"{protocol} needs a 'val' split and {who} none (ImageNet's CoOp 'val' is its test "
        "set). Use 'fewshot-val' (validation drawn from train), 'val-free', or 'oracle-test' "
        "for a LEAKY reproduction."
    )


def plan_splits(
    protocol: str | Protocol = "fewshot-val",
    *,
    train_labels: Any,
    shots: int | str,
    seed: int,
    val_labels: Any | None = None,
    n_test: int | None = None,
    classnames: Sequence[str] | None = None,
) -> SplitPlan:
    """Functional form of ``Protocol(protocol).plan(...)``."""
    proto = protocol if isinstance(protocol, Protocol) else Protocol(protocol)
    return proto.plan(
        train_labels,
        shots=shots,
        seed=seed,
        val_labels=val_labels,
        n_test=n_test,
        classnames=classnames,
    )


class _Guard:
    """Passes ``features`` calls through, refusing the test split unless allowed."""

    def __init__(self, source: FeatureSource, *, allow_test: bool) -> None:
        self._source = source
        self._allow_test = allow_test

    def features(self, split: str, index: Sequence[int] | None, *, views: bool) -> FeatureSet:
        if split == "test" and not self._allow_test:
            raise TestSetAccessError(
                "test features may only be read by fewclip.protocol.evaluate (or as the "
                "validation set of an 'oracle-test' plan, whose results are marked LEAKY)"
            )
        fs = self._source.features(split, index, views=views)
        if not isinstance(fs, FeatureSet):
            raise InvalidTypeError(
                f"feature source returned {type(fs).__name__} for split {split!r}; "
                "expected a fewclip.task.FeatureSet"
            )
        if index is not None:
            if fs.n != len(index):
                raise InvalidValueError(
                    f"feature source returned {fs.n} rows for {len(index)} requested "
                    f"indices of split {split!r}"
                )
            want = torch.as_tensor(
                [int(v) for v in _labels_list(self._source.labels(split))], dtype=torch.long
            )[torch.as_tensor(list(index), dtype=torch.long)]
            if not torch.equal(fs.labels.cpu(), want):
                raise InvalidValueError(
                    f"feature source returned labels for split {split!r} that disagree with "
                    "its labels(split) at the requested indices"
                )
        return fs


def build_task(
    plan: SplitPlan,
    source: FeatureSource,
    *,
    classnames: Sequence[str],
    text_weights: Tensor,
    meta: Mapping[str, Any] | None = None,
    text_tower: TextTower | None = None,
) -> Task:
    """The ``Task`` a method is fitted on: support (with views) and validation per ``plan``.

    Reads only the splits the plan names; the test split only for an ``oracle-test`` plan
    (``TestSetAccessError`` otherwise). ``Task.meta`` records protocol, ``leaky``, shots, seed,
    the validation split and sizes, plus ``meta``. ``text_tower`` is passed on to the task
    (for the prompt learners).
    """
    if not isinstance(plan, SplitPlan):
        raise InvalidTypeError(f"plan: expected a SplitPlan, found {type(plan).__name__}")
    guard = _Guard(source, allow_test=plan.leaky)
    support = guard.features("train", plan.support.indices, views=True)
    val = None
    if plan.val is not None:
        val = guard.features(plan.val.split, plan.val.indices, views=False)
    info: dict[str, Any] = dict(meta or {})
    info.update(
        protocol=plan.protocol,
        leaky=plan.leaky,
        mark=plan.mark,
        shots=plan.shots,
        seed=plan.seed,
        val_split=None if plan.val is None else plan.val.split,
        n_support=support.n,
        n_val=0 if val is None else val.n,
    )
    return Task(list(classnames), text_weights, support, val, info, text_tower)


@dataclass(frozen=True)
class EvalResult:
    """One evaluation: accuracy on a test split under a protocol.

    ``leaky`` is true (and ``mark`` is ``"LEAKY"``) when the protocol is ``oracle-test``; every
    serialisation (``to_dict``, ``str``) carries it.
    """

    protocol: str
    leaky: bool
    accuracy: float
    n: int
    split: str = "test"
    shots: int | str | None = None
    seed: int | None = None
    method: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def mark(self) -> str:
        return LEAKY if self.leaky else ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "leaky": self.leaky,
            "mark": self.mark,
            "method": self.method,
            "shots": self.shots,
            "seed": self.seed,
            "split": self.split,
            "n": self.n,
            "accuracy": self.accuracy,
            "params": dict(self.params),
            "meta": dict(self.meta),
        }

    def __str__(self) -> str:
        tag = f", {LEAKY}" if self.leaky else ""
        who = self.method or "model"
        shots = f" {self.shots}-shot" if self.shots is not None else ""
        seed = f" seed {self.seed}" if self.seed is not None else ""
        return (
            f"{who}{shots}{seed} [{self.protocol}{tag}] {self.split}: "
            f"{100 * self.accuracy:.2f}% of {self.n}"
        )


def _json_params(model: Any) -> dict[str, Any]:
    get = getattr(model, "get_params", None)
    if not callable(get):
        return {}
    out: dict[str, Any] = {}
    for k, v in get().items():
        if isinstance(v, (str, int, float, bool)) or v is None:
            out[k] = v
        elif isinstance(v, (list, tuple)) and all(isinstance(e, (str, int, float)) for e in v):
            out[k] = list(v)
        else:
            out[k] = repr(v)
    for k in ("alpha_", "beta_", "best_epoch_"):
        v = getattr(model, k, None)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[k] = v
    return out


def evaluate(
    model: Any,
    source: FeatureSource,
    plan: SplitPlan,
    *,
    split: str = "test",
    class_index: Sequence[int] | None = None,
    n_classes: int | None = None,
    meta: Mapping[str, Any] | None = None,
) -> EvalResult:
    """Top-1 accuracy of a fitted ``model`` on ``split`` of ``source``: the only reader of test
    features.

    Args:
        model: anything with ``logits(x) -> (N, C)`` (every fewclip method).
        source: the feature source holding the test split (it may be another dataset's source
            for distribution-shift evaluation, e.g. ImageNet → ImageNet-Sketch).
        plan: the plan the model was fitted under; its protocol and ``leaky`` flag are carried
            into the result.
        class_index: keep only these logit columns before the argmax (ImageNet-A/-R: the 200
            ImageNet-1k ids in ``Dataset.meta["imagenet_index"]``); labels index this subset.
        n_classes: how many classes ``split`` has. When given, the scored logits (after
            ``class_index``) must have exactly this many columns: a model fitted on other
            classes (more, fewer, or another dataset's) is an error here instead of an accuracy
            over the wrong columns. ``run`` and the benchmark always pass it.
        meta: extra JSON-able fields for the record (dataset, backbone, prompts, ...).
    """
    test = source.features(split, None, views=False)
    if not isinstance(test, FeatureSet):
        raise InvalidTypeError(
            f"feature source returned {type(test).__name__}, expected a FeatureSet"
        )
    logits_fn: Callable[[Tensor], Tensor] | None = getattr(model, "logits", None)
    if not callable(logits_fn):
        raise InvalidTypeError(
            f"model: expected an object with logits(x), found {type(model).__name__}"
        )
    logits = logits_fn(test.features)
    if class_index is not None:
        logits = logits[
            :, torch.as_tensor(list(class_index), dtype=torch.long, device=logits.device)
        ]
    if n_classes is not None and logits.shape[-1] != n_classes:
        raise InvalidValueError(
            f"{split}: the split has {n_classes} classes but the model scores "
            f"{logits.shape[-1]} (was it fitted on other classes? Methods that can name new "
            "classes build a model for them with for_classes; pass class_index for a subset)"
        )
    pred = logits.argmax(dim=1).cpu()
    y = test.labels.cpu()
    if y.numel() and int(y.max()) >= logits.shape[1]:
        raise InvalidValueError(
            f"{split}: labels go up to {int(y.max())} but the model scores {logits.shape[1]} "
            "classes (pass class_index for a class subset)"
        )
    acc = float((pred == y).float().mean()) if y.numel() else float("nan")
    name = getattr(model, "name", None)
    info = dict(meta or {})
    if class_index is not None:
        info["class_subset"] = len(list(class_index))
    return EvalResult(
        protocol=plan.protocol,
        leaky=plan.leaky,
        accuracy=acc,
        n=int(y.numel()),
        split=split,
        shots=plan.shots,
        seed=plan.seed,
        method=name if isinstance(name, str) else type(model).__name__,
        params=_json_params(model),
        meta=info,
    )


def run(
    method: Any,
    source: FeatureSource,
    *,
    classnames: Sequence[str],
    text_weights: Tensor,
    shots: int | str,
    seed: int,
    protocol: str | Protocol = "fewshot-val",
    params: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> EvalResult:
    """Plan, build the task, fit, evaluate: the whole protocol in one call.

    ``method`` is a registered name (``fewclip.methods.create(method, **params)``) or an
    unfitted estimator with ``fit(task)`` and ``logits(x)``.
    """
    proto = protocol if isinstance(protocol, Protocol) else Protocol(protocol)
    plan = proto.plan_source(source, shots=shots, seed=seed, classnames=classnames)
    task = build_task(plan, source, classnames=classnames, text_weights=text_weights, meta=meta)
    if isinstance(method, str):
        from fewclip import methods

        model = methods.create(method, **dict(params or {}))
    else:
        if params:
            raise InvalidValueError("params: only with a method name (set them on the estimator)")
        model = method
    model.fit(task)
    return evaluate(model, source, plan, n_classes=len(classnames), meta=meta)
