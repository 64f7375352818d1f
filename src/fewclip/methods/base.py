"""The estimator interface shared by every method, the registry, and save/load.

Conventions (close to scikit-learn): keyword-only constructor arguments that are plain values,
``fit(task)`` returns ``self``, fitted state ends in ``_``, ``logits``/``predict``/
``predict_proba``/``score`` on raw (un-normalised) query features, and ``save``/``load`` with
safetensors plus a JSON config, never pickle.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import inspect
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as dump_safetensors
from torch import Tensor

from fewclip._device import resolve_device
from fewclip._version import __version__
from fewclip.errors import (
    DamagedFileError,
    FewclipError,
    InvalidTypeError,
    InvalidValueError,
    MissingFileError,
    UnknownNameError,
    UnknownParameterError,
    did_you_mean,
)
from fewclip.functional import l2_normalize, pow2_rescale_rows
from fewclip.outputs import write_folder
from fewclip.task import Task, check_features
from fewclip.text_tower import TextTower

__all__ = [
    "BUILTIN_METHODS",
    "CONFIG_FILE",
    "STATE_FILE",
    "Method",
    "NewClassesError",
    "NotFittedError",
    "available",
    "check_params",
    "create",
    "describe_saved",
    "fit_seeds",
    "get",
    "load",
    "register",
    "resolve",
    "run_params",
    "seeds_batchable",
]

CONFIG_FILE = "config.json"
STATE_FILE = "state.safetensors"
#: The record ``fewclip.Adapter`` adds to a method folder (named here so that saving a method
#: over an adapter folder knows it as fewclip's own file).
ADAPTER_FILE = "adapter.json"
#: Every file name fewclip writes into a method or adapter folder; nothing else is ever removed.
OWN_FILES = frozenset({CONFIG_FILE, STATE_FILE, ADAPTER_FILE})
_FORMAT = "fewclip-method/1"

_REGISTRY: dict[str, type[Method]] = {}
_DTYPES = {"float16": torch.float16, "float32": torch.float32, "float64": torch.float64}

M = TypeVar("M", bound="Method")
P = TypeVar("P", bound="EstimatorParams")


class NotFittedError(FewclipError, ValueError, AttributeError):
    """A method was used before ``fit`` (or ``load``)."""


class NewClassesError(FewclipError, ValueError):
    """A fitted method was asked to score classes it was not fitted on, and cannot: its
    classifier holds fitted values for the training classes only (``Method.for_classes``)."""


def register(name: str) -> Any:
    """Class decorator: register a method under ``name`` (e.g. ``"tip-adapter"``)."""

    def wrap(cls: type[M]) -> type[M]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise InvalidValueError(f"method name {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


#: Built-in method name → its module under ``fewclip.methods``. Importing the module registers
#: the method; the table lets a lookup import only the family it needs (``fewclip predict``
#: then never imports the other fourteen). A test checks it against the modules.
BUILTIN_METHODS: dict[str, str] = {
    "ape": "ape",
    "ape-t": "ape",
    "clap": "clap",
    "clip-adapter": "clip_adapter",
    "cocoop": "cocoop",
    "coop": "coop",
    "cross-modal-lp": "cross_modal_lp",
    "gda": "gda",
    "kgcoop": "kgcoop",
    "linear-probe": "linear_probe",
    "lp++": "lp_pp",
    "prograd": "prograd",
    "proker": "proker",
    "taskres": "taskres",
    "tip-adapter": "tip_adapter",
    "tip-adapter-f": "tip_adapter",
    "tip-x": "tip_x",
    "zero-shot": "zero_shot",
    "zs-lp": "clap",
}


def available() -> list[str]:
    """Names of every method, built-in or registered, sorted."""
    return sorted(set(_REGISTRY) | set(BUILTIN_METHODS))


def resolve(name: str) -> str:
    """The registered name ``name`` refers to (matched case-insensitively).

    Raises :class:`~fewclip.errors.UnknownNameError` listing close matches and every name.
    """
    if name in _REGISTRY or name in BUILTIN_METHODS:
        return name
    folded = {n.lower(): n for n in available()}
    if isinstance(name, str) and name.strip().lower() in folded:
        return folded[name.strip().lower()]
    raise UnknownNameError(
        f"unknown method {name!r}{did_you_mean(str(name), available())}; available methods: "
        f"{', '.join(available())}"
    )


def get(name: str) -> type[Method]:
    """The method class registered under ``name`` (case-insensitive, see :func:`resolve`),
    importing its module on first use."""
    key = resolve(name)
    if key not in _REGISTRY:
        importlib.import_module(f"fewclip.methods.{BUILTIN_METHODS[key]}")
    return _REGISTRY[key]


def check_params(name: str, params: Mapping[str, Any]) -> None:
    """Raise :class:`~fewclip.errors.UnknownParameterError` for a key of ``params`` that the
    method ``name`` has no constructor parameter for; the message lists the valid ones."""
    cls = get(name)
    valid = sorted(cls._get_param_names())
    unknown = [k for k in params if k not in valid]
    if unknown:
        hints = "; ".join(f"{k!r}{did_you_mean(k, valid)}" for k in unknown)
        raise UnknownParameterError(
            f"{cls.name}: unknown parameter {hints}. Its parameters are: {', '.join(valid)}"
        )


def create(name: str, **params: Any) -> Method:
    """An unfitted instance of the method ``name`` with the given hyper-parameters (each one
    checked: an unknown key raises ``UnknownParameterError`` naming the valid ones)."""
    check_params(name, params)
    return get(name)(**params)


def run_params(
    name: str, params: Mapping[str, Any] | None, *, seed: int, device: str | None = None
) -> dict[str, Any]:
    """``params`` plus the run's ``seed`` (and ``device``) for methods that take them and where
    ``params`` does not set them: the rule by which ``fewclip fit`` and every bench cell give
    the draw's seed to the method too, so both build the same adapter."""
    out = dict(params or {})
    names = set(get(name)._get_param_names())
    if "seed" in names:
        out.setdefault("seed", seed)
    if device is not None and "device" in names:
        out.setdefault("device", device)
    return out


#: Parameters that may differ between the copies :func:`fit_seeds` fits together.
_SEED_PARAMS = frozenset({"seed", "progress"})


def seeds_batchable(
    models: Sequence[Method], tasks: Sequence[Task], *, force: bool = False
) -> bool:
    """Whether :func:`fit_seeds` fits ``models[i]`` on ``tasks[i]`` as one batched model: at
    least two copies of one class with ``batches_seeds``, their parameters equal except
    ``seed`` (and ``progress``), tasks that agree in shape (classes, D, support size and
    views, validation size or none), the method's own conditions (``_seeds_batchable``), and,
    unless ``force``, a device where the method says batching is faster (``_seeds_pay``: not
    on a CPU for the built-in methods).
    """
    models, tasks = list(models), list(tasks)
    if len(models) != len(tasks):
        raise InvalidValueError(
            f"tasks: expected one task per model ({len(models)}), found {len(tasks)}"
        )
    for m in models:
        if not isinstance(m, Method):
            raise InvalidTypeError(f"models: expected fewclip methods, found {type(m).__name__}")
    if len(models) < 2:
        return False
    cls = type(models[0])
    return (
        cls.batches_seeds
        and all(type(m) is cls for m in models)
        and _same_but_seed(models)
        and (force or cls._seeds_pay(models[0]._device.type))
        and all(isinstance(t, Task) for t in tasks)
        and len({_task_shape(t) for t in tasks}) == 1
        and cls._seeds_batchable(models, tasks)
    )


def fit_seeds(models: Sequence[Method], tasks: Sequence[Task], *, force: bool = False) -> int:
    """Fit ``models[i]`` on ``tasks[i]`` for every ``i``; return how many were fitted together
    (``len(models)``, or 1 when each was fitted on its own).

    When :func:`seeds_batchable` says so (``force``: even on a device where the method says
    batching is slower), the copies are fitted as one batched model: stacked parameters, each
    seed keeping its own initialisation and data-order random streams, its own task and its
    own validation choices. Each model then ends as its own ``fit(task)`` would leave it,
    within float tolerance: a batched product may sum in another order than a single one (bit
    for bit on the CPUs we measured). Otherwise each model is fitted on its own, in order.
    """
    models, tasks = list(models), list(tasks)
    if not seeds_batchable(models, tasks, force=force):
        for m, t in zip(models, tasks, strict=True):
            m.fit(t)
        return 1
    for m, t in zip(models, tasks, strict=True):
        m._begin_fit(t)
    type(models[0])._fit_seeds(models, tasks)
    return len(models)


def _same_but_seed(models: Sequence[Method]) -> bool:
    first = {k: v for k, v in models[0].get_params(deep=False).items() if k not in _SEED_PARAMS}
    for m in models[1:]:
        other = {k: v for k, v in m.get_params(deep=False).items() if k not in _SEED_PARAMS}
        if first.keys() != other.keys() or any(_differs(first[k], other[k]) for k in first):
            return False
    return True


def _task_shape(task: Task) -> tuple[Any, ...]:
    s, v = task.support, task.val
    return (
        task.n_classes,
        task.dim,
        s.n,
        s.n_views,
        None if v is None else v.n,
        task.text_tower is None,
    )


def file_not_folder_message(path: Path, expected: str) -> str:
    """The error for a file given where a saved folder was expected: a pickle or ``torch.save``
    file (a zip) is named as such, since it is what users of other libraries pass. ``expected``
    describes the folder, e.g. ``"a folder with config.json and state.safetensors"``."""
    with open(path, "rb") as f:
        head = f.read(2)
    if head[:1] == b"\x80" or head == b"PK":
        return (
            f"{path}: looks like a pickle / torch.save file; fewclip never loads pickle. "
            f"Expected {expected}"
        )
    return f"{path}: expected {expected}, found a file"


def _read_config(path: Path) -> dict[str, Any]:
    cfg_path = path / CONFIG_FILE
    if path.is_file():
        raise InvalidValueError(
            file_not_folder_message(
                path, f"a method folder with {CONFIG_FILE} and {STATE_FILE} written by Method.save"
            )
        )
    if not cfg_path.is_file():
        raise MissingFileError(f"{path}: no {CONFIG_FILE} found; expected a folder from save()")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidValueError(f"{cfg_path}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict) or cfg.get("format") != _FORMAT:
        raise InvalidValueError(
            f"{cfg_path}: not a fewclip method config (expected format {_FORMAT!r})"
        )
    return cfg


def load(path: str | os.PathLike[str]) -> Method:
    """Load any saved method; the folder's config names the method class."""
    p = Path(path)
    cfg = _read_config(p)
    return get(cfg["method"])._from_saved(p, cfg)


def describe_saved(path: str | os.PathLike[str]) -> str | None:
    """``"a tip-adapter adapter"`` / ``"a tip-adapter method"`` when ``path`` holds a folder
    written by ``Method.save`` (with or without an adapter record), ``None`` otherwise."""
    p = Path(path)
    try:
        cfg = json.loads((p / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(cfg, dict) or cfg.get("format") != _FORMAT:
        return None
    kind = "adapter" if (p / ADAPTER_FILE).is_file() else "method"
    return f"a {cfg.get('method', 'fewclip')} {kind}"


#: Query rows per block in ``Method.logits``.
PREDICT_ROWS = 4096


class EstimatorParams:
    """scikit-learn's parameter protocol without importing scikit-learn (a second of start-up
    for every command): ``get_params``/``set_params`` over the constructor's keyword
    arguments, stored under their own names, so ``sklearn.base.clone`` and grid searches work.
    """

    _estimator_type = "classifier"

    @classmethod
    def _get_param_names(cls) -> list[str]:
        """The constructor's parameter names, sorted (scikit-learn's rule)."""
        init = cls.__init__
        if init is object.__init__:
            return []
        skip = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        params = inspect.signature(init).parameters.values()
        return sorted(p.name for p in params if p.name != "self" and p.kind not in skip)

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Constructor parameters → current values (``deep``: nested ones as ``a__b``)."""
        out: dict[str, Any] = {}
        for name in self._get_param_names():
            value = getattr(self, name)
            if deep and hasattr(value, "get_params") and not isinstance(value, type):
                out.update((f"{name}__{k}", v) for k, v in value.get_params().items())
            out[name] = value
        return out

    def set_params(self: P, **params: Any) -> P:
        """Set constructor parameters; an unknown one raises ``UnknownParameterError``."""
        valid = self._get_param_names()
        for name, value in params.items():
            if name not in valid:
                raise UnknownParameterError(
                    f"{type(self).__name__}: unknown parameter {name!r}"
                    f"{did_you_mean(name, valid)}. Its parameters are: {', '.join(valid)}"
                )
            setattr(self, name, value)
        return self

    def __sklearn_tags__(self) -> Any:
        """scikit-learn ≥ 1.6 estimator tags (a classifier), imported only when asked for."""
        from sklearn.utils import ClassifierTags, Tags, TargetTags

        return Tags(
            estimator_type="classifier",
            target_tags=TargetTags(required=True),
            classifier_tags=ClassifierTags(),
        )

    def __repr__(self) -> str:
        defaults = {
            p.name: p.default
            for p in inspect.signature(type(self).__init__).parameters.values()
            if p.default is not inspect.Parameter.empty
        }
        shown = [
            f"{k}={v!r}"
            for k, v in self.get_params(deep=False).items()
            if k not in defaults or _differs(v, defaults[k])
        ]
        return f"{type(self).__name__}({', '.join(shown)})"


def _differs(a: Any, b: Any) -> bool:
    try:
        return bool(a != b)
    except Exception:  # e.g. tensors: show them
        return True


class Method(EstimatorParams):
    """Base class of every few-shot method.

    Subclasses implement ``_fit(task)`` and ``_logits(x_normalised)``, list their fitted
    tensors in ``_state_tensors`` and JSON-able fitted values in ``_state_values``, and declare
    their traits (``training_free``, ``uses_validation``, ``chooses_on_validation``,
    ``quick_params``).
    ``logits`` L2-normalises the raw query features before calling ``_logits``; methods that
    need raw features (CLIP-Adapter) override ``logits``.

    Attributes:
        classnames_ list of str: the fitted task's class names, in class-id order.
        classes_ list of int: the class ids ``0, …, C − 1`` (scikit-learn's ``classes_``).
        n_features_in_ int: the feature dimension D that queries must have.
    """

    name: ClassVar[str] = "base"
    # -- traits: what tests (fewclip.testing.check_method), the benchmark and the CLI read
    #    about a method instead of lists of method names --------------------------------------
    #: ``fit`` is closed-form or a search over a grid: no gradient steps, no epochs.
    training_free: ClassVar[bool] = False
    #: ``fit`` may read ``task.val`` (hyper-parameter search, epoch selection, early stopping).
    #: False is a promise, checked by the conformance suite: the fitted method is the same with
    #: or without a validation set, so the benchmark does not load one for it.
    uses_validation: ClassVar[bool] = False
    #: The choices a fit with a validation set makes on it and reports: ``"search"``
    #: (hyper-parameters, ``_selection``) and/or ``"epoch"`` (a training epoch or iteration,
    #: ``_epoch_selection``). The conformance suite checks that each is reported, and best.
    chooses_on_validation: ClassVar[frozenset[str]] = frozenset()
    #: Hyper-parameters that make ``fit`` take a fraction of a second on a small task (short
    #: schedules, coarse grids): for tests and smoke runs, never for reported results.
    quick_params: ClassVar[Mapping[str, Any]] = {}
    #: Why the fitted method cannot be exported as a traced graph (``fewclip export``), or
    #: ``None``: ``_query_logits`` is then traced as it is and must use tensor operations only
    #: (no Python branch on the query's values).
    export_refusal: ClassVar[str | None] = None
    #: The method trains inside the text encoder and needs ``task.text_tower``.
    needs_text_tower: ClassVar[bool] = False
    #: The method's scores run the text encoder on every query (CoCoOp: prompts conditioned on
    #: the image), so predicting needs the tower too. A fit keeps the task's tower; a loaded
    #: method scores only after :meth:`attach_text_tower` (``Adapter.load_backbone`` does it),
    #: and such a method cannot be exported as a feature-level head (``export_refusal``).
    predicts_with_text_tower: ClassVar[bool] = False
    #: Why a fitted method cannot score classes it was not fitted on (base-to-new and
    #: cross-dataset evaluation), or ``None`` when it can, through :meth:`for_classes`. The
    #: default refuses: a classifier learned row by row for the training classes (a cache's
    #: one-hot labels, a linear head, per-class residuals or prototypes) has nothing to say
    #: about another class. A method that builds its classifier from the class names' text
    #: features alone (zero-shot CLIP, a learned prompt context, an image-side adapter) sets
    #: ``None`` and implements ``_for_classes``.
    new_class_refusal: ClassVar[str | None] = (
        "its classifier is fitted row by row for the training classes; it has none for others"
    )
    #: Copies that differ only in ``seed``, fitted on tasks of one shape (the draws of one
    #: grid cell at several seeds), can train as one batched model (:func:`fit_seeds`):
    #: stacked parameters, each seed with its own initialisation and data order, each result
    #: equal to its own ``fit`` within float tolerance. Such a method implements
    #: ``_fit_seeds``, and says with ``_seeds_pay`` on which devices batching is faster.
    batches_seeds: ClassVar[bool] = False
    _state_tensors: ClassVar[tuple[str, ...]] = ()
    _state_values: ClassVar[tuple[str, ...]] = ()

    # -- scikit-learn style API -------------------------------------------------------------
    def fit(self: M, task: Task) -> M:
        """Fit on ``task`` and return ``self``."""
        self._begin_fit(task)
        self._fit(task)
        return self

    def _begin_fit(self, task: Task) -> None:
        """Check ``task`` and record what every fit records (class names and ids, D)."""
        if not isinstance(task, Task):
            raise InvalidTypeError(
                f"task: expected a fewclip.Task, found {type(task).__name__}; build one with "
                "fewclip.Task(classnames, text_weights, support=fewclip.FeatureSet(...))"
            )
        if self.needs_text_tower and task.text_tower is None:
            raise InvalidValueError(
                f"task.text_tower: {self.name} learns prompt vectors inside the text encoder, "
                "but the task has none; build it with text_tower=backbone.text_tower() (an "
                "open_clip or transformers CLIP backbone)"
            )
        self.classnames_ = list(task.classnames)
        self.classes_ = list(range(task.n_classes))
        self.n_features_in_ = task.dim

    @classmethod
    def _seeds_batchable(cls, models: Sequence[Method], tasks: Sequence[Task]) -> bool:
        """Whether ``_fit_seeds`` can fit these unfitted copies together (called after the
        generic checks of :func:`seeds_batchable`: one class, the same parameters but ``seed``,
        tasks of one shape). A method adds its own conditions (a branch it batches, equal
        cache labels)."""
        return cls.batches_seeds

    @classmethod
    def _seeds_pay(cls, device_type: str) -> bool:
        """Whether a batched fit is expected to be faster than fits one by one on a device of
        this type (``"cpu"``, ``"cuda"``, ...). The default: not on a CPU, where a training
        step of the batched methods is bound by its matrix products, which batching does not
        shrink, and the seeds' interleaved working sets cost cache (measured 14–25% slower for
        CLIP-Adapter, 9% slower for Tip-Adapter-F at ImageNet scale; docs/performance.md);
        elsewhere yes, where each step's many small kernels then launch once for all seeds
        (expected, not measured on a GPU yet)."""
        return device_type != "cpu"

    @classmethod
    def _fit_seeds(cls, models: Sequence[Method], tasks: Sequence[Task]) -> None:
        """Fit ``models[i]`` on ``tasks[i]`` as one batched model (``_begin_fit`` already ran
        on each); every model ends as its own ``fit`` would leave it, within float tolerance."""
        raise NotImplementedError(f"{cls.__name__} sets batches_seeds but has no _fit_seeds")

    def logits(self, x: Tensor) -> Tensor:
        """Class scores (N, C) for raw query features ``x`` (N, D).

        Computed in blocks of ``PREDICT_ROWS`` rows, so a method's (rows × keys) temporaries
        stay bounded however many queries there are (a 16,000-key cache on 50,000 test images
        would otherwise need 3.2 GB per float32 temporary).
        """
        x = self._check_query(x)
        if len(x) <= PREDICT_ROWS:
            return self._query_logits(x)
        return torch.cat([self._query_logits(part) for part in x.split(PREDICT_ROWS)])

    def _query_logits(self, x: Tensor) -> Tensor:
        """Logits of a block of raw, checked queries: ``_logits`` of the L2-normalised rows."""
        return self._logits(l2_normalize(x))

    def predict(self, x: Tensor) -> Tensor:
        """Predicted class ids (N,)."""
        return self.logits(x).argmax(dim=1)

    def predict_proba(self, x: Tensor) -> Tensor:
        """Softmax of the logits (N, C)."""
        return self.logits(x).float().softmax(dim=1)

    def score(self, x: Tensor, y: Tensor, sample_weight: Any = None) -> float:
        """Top-1 accuracy in [0, 1]."""
        if sample_weight is not None:
            raise InvalidValueError("sample_weight: not supported, expected None")
        pred = self.predict(x)
        y = torch.as_tensor(y, device=pred.device)
        if y.shape != pred.shape:
            raise InvalidValueError(
                f"y: expected shape {tuple(pred.shape)}, found {tuple(y.shape)}"
            )
        return float((pred == y).float().mean()) if len(y) else 0.0

    def attach_text_tower(self: M, tower: Any) -> M:
        """Give a fitted or loaded method the text tower its scores need
        (``predicts_with_text_tower``; ``backbone.text_tower()`` of the backbone it was fitted
        with) and return ``self``. Methods that predict without one ignore it."""
        if self.predicts_with_text_tower:
            self._check_fitted()
            self._attach_text_tower(tower)
        return self

    @property
    def can_score(self) -> bool:
        """Whether ``logits`` can run now: fitted, and holding a text tower if its scores need
        one (a method loaded from disk that ``predicts_with_text_tower`` needs
        :meth:`attach_text_tower` first)."""
        if not hasattr(self, "classnames_"):
            return False
        return not self.predicts_with_text_tower or getattr(self, "_text_tower", None) is not None

    def for_classes(
        self: M,
        classnames: Sequence[str],
        text_weights: Tensor,
        *,
        text_tower: TextTower | None = None,
    ) -> M:
        """A copy of this fitted method that scores ``classnames`` instead of the classes it
        was fitted on: the contract behind base-to-new and cross-dataset evaluation.

        Everything learned or selected on the training classes is kept (adapter weights, a
        prompt context, searched hyper-parameters); only the class-specific part is rebuilt
        from the new classes' ``text_weights`` (C', D), raw or normalised as ``Task`` takes
        them, and, for the prompt learners, their names through ``text_tower`` (the same
        backbone's). Logits of the copy are (N, C') over the new classes; this method is
        unchanged. Given the training classes again it scores as the method itself does.

        Raises ``NewClassesError`` with the reason when the method cannot
        (``new_class_refusal``, or a configuration such as class-specific contexts).
        """
        self._check_fitted()
        if self.new_class_refusal is not None:
            raise NewClassesError(
                f"{self.name} cannot score classes it was not fitted on: {self.new_class_refusal}"
            )
        names = list(classnames)
        if not names or not all(isinstance(n, str) for n in names):
            raise InvalidValueError(
                f"classnames: expected a non-empty list of class names, found {classnames!r}"
            )
        w = check_features("text_weights", text_weights, dim=self.n_features_in_)
        if w.shape[0] != len(names):
            raise InvalidValueError(
                f"text_weights: expected one row per class ({len(names)} classnames), found "
                f"shape {tuple(w.shape)}"
            )
        if text_tower is not None and not isinstance(text_tower, TextTower):
            raise InvalidTypeError(
                "text_tower: expected a fewclip.text_tower.TextTower (backbone.text_tower()), "
                f"found {type(text_tower).__name__}"
            )
        other = copy.copy(self)
        other._for_classes(names, w, text_tower)
        other.classnames_ = names
        other.classes_ = list(range(len(names)))
        return other

    # -- for subclasses ---------------------------------------------------------------------
    def _fit(self, task: Task) -> None:
        raise NotImplementedError

    def _attach_text_tower(self, tower: Any) -> None:
        """Keep ``tower`` for scoring (``predicts_with_text_tower`` methods implement it)."""
        raise NotImplementedError

    def _for_classes(
        self, classnames: list[str], text_weights: Tensor, text_tower: TextTower | None
    ) -> None:
        """Rebuild the class-specific fitted state of this copy (``for_classes``) for
        ``classnames`` and their raw ``text_weights``, assigning new attributes (never changing
        tensors in place: the original shares them). Methods with ``new_class_refusal = None``
        implement it."""
        raise NotImplementedError(
            f"{type(self).__name__} sets new_class_refusal = None but has no _for_classes"
        )

    def _selection(self) -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
        """What the last ``fit`` chose by a search on ``task.val``, for the conformance suite:
        ``(candidates, chosen)``, the candidates in the reference's visiting order, each as
        constructor parameters that fit that candidate without a search, and the chosen one.
        ``None`` when nothing was chosen by a search (the default)."""
        return None

    def _epoch_selection(self) -> tuple[list[tuple[int, float]], int, str, bool] | None:
        """What the last ``fit`` chose among training epochs (or iterations) on ``task.val``,
        for the conformance suite: ``(history, chosen, ties, final)``. ``history`` holds every
        ``(epoch, validation accuracy in [0, 1])`` scored, ``chosen`` the kept epoch, ``ties``
        ``"first"`` or ``"last"`` (which of equal scores the reference keeps), and ``final``
        whether the fitted method is that epoch's state as it is (no search after it).
        ``None`` when no epoch was chosen on validation (the default)."""
        return None

    def _logits(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    @property
    def _dtype(self) -> torch.dtype:
        dtype = getattr(self, "dtype", "float32")
        if dtype not in _DTYPES:
            raise InvalidValueError(f"dtype: expected one of {sorted(_DTYPES)}, found {dtype!r}")
        return _DTYPES[dtype]

    @property
    def _device(self) -> torch.device:
        return resolve_device(getattr(self, "device", "cpu"))

    def _to(self, x: Tensor) -> Tensor:
        """``x`` in the method's compute dtype and device."""
        return x.to(device=self._device, dtype=self._dtype)

    def _check_fitted(self) -> None:
        if not hasattr(self, "classnames_"):
            raise NotFittedError(
                f"{type(self).__name__} is not fitted yet; call fit(task) or load(path) first"
            )

    def _check_query(self, x: Tensor) -> Tensor:
        """Checked queries on the method's device and dtype, each row first rescaled by a power
        of two (exact: see ``functional.pow2_rescale_rows``), so that rows of any magnitude
        give finite scores and the predictions of the same rows at unit norm."""
        self._check_fitted()
        x = check_features("x", x, dim=self.n_features_in_)
        return self._to(pow2_rescale_rows(x))

    # -- persistence ------------------------------------------------------------------------
    def _extra_state(self) -> dict[str, Tensor]:
        """Fitted tensors that are not plain attributes (e.g. a module's state dict)."""
        return {}

    def _load_extra_state(self, tensors: dict[str, Tensor]) -> None:
        """Inverse of ``_extra_state``; called after plain attributes are restored."""

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the fitted method to the folder ``path``: config JSON + safetensors.

        The folder must be new or empty; one that a previous ``save`` wrote is replaced only
        with ``overwrite=True``, atomically, and a folder holding anything else is refused
        (``fewclip.errors.OutputFolderError``): see ``fewclip.outputs``.
        """
        return self._save(path, overwrite=overwrite)

    def _save(
        self,
        path: str | os.PathLike[str],
        *,
        overwrite: bool,
        extra: Callable[[Path], None] | None = None,
        what: str = "method",
    ) -> Path:
        """``save``, with ``extra(tmp)`` adding files (e.g. ``adapter.json``) to the same
        atomic write."""
        self._check_fitted()
        tensors = {k: getattr(self, k).detach().contiguous().cpu() for k in self._state_tensors}
        tensors.update({k: v.detach().contiguous().cpu() for k, v in self._extra_state().items()})
        values = {k: getattr(self, k) for k in self._state_values}
        cfg = {
            "format": _FORMAT,
            "method": self.name,
            "fewclip_version": __version__,
            "params": self.get_params(deep=False),
            "classnames": self.classnames_,
            "n_features_in": self.n_features_in_,
            "state_values": values,
        }
        state = dump_safetensors(tensors, metadata={"method": self.name})
        cfg["state_sha256"] = hashlib.sha256(state).hexdigest()
        text = json.dumps(cfg, indent=2, default=_json_default)

        def write(tmp: Path) -> None:
            (tmp / STATE_FILE).write_bytes(state)
            (tmp / CONFIG_FILE).write_text(text)
            if extra is not None:
                extra(tmp)

        target = Path(path)
        write_folder(
            target, write, own_files=OWN_FILES, owner=describe_saved, overwrite=overwrite, what=what
        )
        return target

    @classmethod
    def load(cls: type[M], path: str | os.PathLike[str]) -> M:
        """Load a method saved by ``save``; refuses a folder holding another method."""
        p = Path(path)
        cfg = _read_config(p)
        if cls is not Method and cfg["method"] != cls.name:
            raise InvalidValueError(
                f"{p}: holds a {cfg['method']!r} method, expected {cls.name!r}; "
                "use fewclip.methods.load(path) to load whatever it holds"
            )
        method = get(cfg["method"])._from_saved(p, cfg)
        return method  # type: ignore[return-value]

    @classmethod
    def _from_saved(cls, path: Path, cfg: dict[str, Any]) -> Method:
        """Rebuild the method from its folder, validating it on the way: the config's types,
        the state's checksum and finiteness (:func:`_read_state`), and one probe query
        (:func:`_probe`). A damaged folder raises ``DamagedFileError``."""
        classnames, n_features = _check_config(path, cfg)
        params = {k: _tuples(v) for k, v in cfg["params"].items()}
        method = cls(**params)
        tensors = _read_state(path, cfg)
        missing = [k for k in cls._state_tensors if k not in tensors]
        if missing:
            raise DamagedFileError(
                f"{path / STATE_FILE}: missing fitted tensors {missing}; {REFIT_HINT}"
            )
        method.classnames_ = classnames
        method.classes_ = list(range(len(classnames)))
        method.n_features_in_ = n_features
        for k in cls._state_tensors:
            setattr(method, k, tensors.pop(k).to(method._device))
        for k, v in cfg.get("state_values", {}).items():
            setattr(method, k, _tuples(v))
        method._load_extra_state({k: v.to(method._device) for k, v in tensors.items()})
        _probe(method, path)
        return method


#: How to recover from a damaged method or adapter folder (every DamagedFileError about one).
REFIT_HINT = "the folder is damaged: fit it again (`fewclip fit ... -o FOLDER --overwrite`)"


def _check_config(path: Path, cfg: dict[str, Any]) -> tuple[list[str], int]:
    """The class names and feature dimension a method config records, checked for type."""
    where = path / CONFIG_FILE
    names = cfg.get("classnames")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise DamagedFileError(
            f"{where}: 'classnames' is not a non-empty list of names; {REFIT_HINT}"
        )
    dim = cfg.get("n_features_in")
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        raise DamagedFileError(
            f"{where}: 'n_features_in' is {dim!r}, expected a positive integer; {REFIT_HINT}"
        )
    # every save writes "params"; "state_values" may be absent (folders of older versions)
    for key, value in (
        ("params", cfg.get("params")),
        ("state_values", cfg.get("state_values", {})),
    ):
        if not isinstance(value, dict):
            raise DamagedFileError(f"{where}: {key!r} is not a JSON object; {REFIT_HINT}")
    return list(names), dim


def _read_state(path: Path, cfg: Mapping[str, Any]) -> dict[str, Tensor]:
    """The tensors of ``state.safetensors``, after checking its SHA-256 against the one the
    config recorded (folders saved before fewclip recorded it are read unchecked) and that
    every floating-point tensor is finite."""
    where = path / STATE_FILE
    try:
        data = where.read_bytes()
    except FileNotFoundError:
        raise DamagedFileError(f"{where}: missing; {REFIT_HINT}") from None
    want = cfg.get("state_sha256")
    got = hashlib.sha256(data).hexdigest()
    if want is not None and got != want:
        raise DamagedFileError(
            f"{where}: checksum mismatch (SHA-256 {got[:12]}…, {CONFIG_FILE} recorded "
            f"{str(want)[:12]}…): the file changed after it was saved; {REFIT_HINT}"
        )
    try:
        tensors = load_safetensors(data)
    except Exception as e:  # safetensors raises its own error type for every malformed file
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise DamagedFileError(
            f"{where}: not a readable safetensors file ({reason}); {REFIT_HINT}"
        ) from None
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise DamagedFileError(
                f"{where}: fitted tensor {name!r} holds {bad} non-finite values (NaN or inf); "
                f"{REFIT_HINT}"
            )
    return tensors


def _probe(method: Method, path: Path) -> None:
    """Score one query row: the loaded tensors must give one finite score per class name
    (catches tensors cut or grown against the class names or the feature dimension). A
    method that scores through the text tower has none yet: its ``_load_extra_state`` checks
    the shapes instead."""
    if not method.can_score:
        return
    n, d = len(method.classnames_), method.n_features_in_
    try:
        out = method.logits(torch.ones(1, d))
    except FewclipError:
        raise
    except (RuntimeError, IndexError, ValueError) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise DamagedFileError(
            f"{path}: the fitted tensors do not fit {CONFIG_FILE} ({n} class names, {d} "
            f"features): {reason}; {REFIT_HINT}"
        ) from None
    if tuple(out.shape) != (1, n):
        raise DamagedFileError(
            f"{path}: the fitted tensors give {out.shape[-1]} class scores, but {CONFIG_FILE} "
            f"names {n} classes; {REFIT_HINT}"
        )
    if not bool(torch.isfinite(out).all()):
        raise DamagedFileError(f"{path}: the fitted tensors give non-finite scores; {REFIT_HINT}")


def _tuples(v: Any) -> Any:
    """JSON turns tuples into lists; constructor parameters that were tuples come back as such."""
    return tuple(v) if isinstance(v, list) else v


def _json_default(o: Any) -> Any:
    if isinstance(o, tuple):
        return list(o)
    if isinstance(o, Tensor):
        return o.tolist()
    raise InvalidTypeError(f"not JSON serialisable: {type(o).__name__}")
