"""What a benchmark run covers: ``BenchConfig``, its YAML form, overrides and cell hashes.

A run is the grid ``datasets × backbones × methods × shots × seeds``; one point of that grid is a
*cell*. Each cell is identified by the SHA-256 of its canonical JSON (``cell_hash``), which is
what makes an interrupted run resumable: a cell whose hash is already in the results file is
never run again.

Configs come from a YAML file or a packaged preset (``load_config("tip-adapter")``) plus
``key=value`` overrides, as typed on a command line::

    shots=1,2,4                        # a list: comma-separated items
    methods=all                        # every registered method
    params.tip-adapter.alpha=1.0       # a method hyper-parameter (dotted key)
    dataset_params.eurosat.tip-adapter-f.epochs=100
    protocol=oracle-test
    protocol_options.val_shots=2
    protocol=base-to-new                       # a generalisation protocol (fewclip.generalisation)
    protocol_options.targets=imagenet_sketch   # its targets (cross-dataset, domain-generalisation)

Values are parsed as YAML (safe loader; ``1`` is an int, ``1.0`` and ``1e-3`` are floats,
``true`` a bool, ``null`` None); an item list is written ``a,b,c`` or ``[a, b, c]``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from fewclip.errors import FewclipError

__all__ = [
    "BENCH_FORMAT",
    "DEFAULT_METHODS",
    "BenchConfig",
    "Cell",
    "ConfigError",
    "apply_overrides",
    "canonical_json",
    "cell_hash",
    "load_config",
    "presets",
]

#: Version tag written into every cell and row; part of every cell hash.
BENCH_FORMAT = "fewclip-bench/1"

#: The methods of the two papers fewclip starts from (the default of ``BenchConfig.methods``).
DEFAULT_METHODS: tuple[str, ...] = (
    "zero-shot",
    "linear-probe",
    "clip-adapter",
    "tip-adapter",
    "tip-adapter-f",
)

_PROTOCOL_OPTIONS = ("val_shots", "repeat", "allow_fewer")
#: Shots of a grid that gives none: the few-shot curve, or the papers' 16 shots for a
#: generalisation protocol.
DEFAULT_SHOTS: tuple[int, ...] = (1, 2, 4, 8, 16)
GENERALISATION_SHOTS: tuple[int, ...] = (16,)


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-3`` as a float (YAML 1.1 needs ``1.0e-3``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


class ConfigError(FewclipError, ValueError):
    """A benchmark config, preset or override is invalid; the message names the offending key."""


# -- canonical JSON and hashes ---------------------------------------------------------------
def _canonical(value: Any, where: str) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, found {value!r}")
        # 1 and 1.0 configure a method identically; hash them identically too.
        return int(value) if value.is_integer() and abs(value) < 2**53 else value
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(f"{where}: keys must be strings, found {k!r}")
            out[k] = _canonical(v, f"{where}.{k}")
        return out
    if isinstance(value, (list, tuple)):
        return [_canonical(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise ConfigError(
        f"{where}: expected a JSON-able value (str, number, bool, null, list, mapping), "
        f"found {type(value).__name__}"
    )


def canonical_json(value: Any) -> str:
    """The canonical JSON text of ``value``: sorted keys, no whitespace, tuples as lists,
    integral floats as ints (``1.0`` → ``1``), non-finite numbers refused."""
    return json.dumps(
        _canonical(value, "value"),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )


def cell_hash(cell: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of ``canonical_json(cell)``: equal for equal cells, whatever the key order,
    tuple/list or ``1``/``1.0`` spelling, and stable across processes and Python versions."""
    return hashlib.sha256(canonical_json(cell).encode("utf-8")).hexdigest()


# -- cells --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    """One point of the grid: a method fitted on one draw of one dataset with one backbone.

    ``params`` are the hyper-parameters the config gives explicitly for this method and dataset
    (library defaults are not part of the cell, so a fewclip upgrade does not invalidate rows;
    every row records the full resolved parameters and the library version).
    """

    method: str
    dataset: str
    backbone: str
    shots: int
    seed: int
    protocol: str
    protocol_options: Mapping[str, Any]
    params: Mapping[str, Any]
    views: int | None
    prompts: str

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able identity of the cell (exactly what ``hash`` covers)."""
        return {
            "format": BENCH_FORMAT,
            "method": self.method,
            "dataset": self.dataset,
            "backbone": self.backbone,
            "shots": self.shots,
            "seed": self.seed,
            "protocol": self.protocol,
            "protocol_options": dict(self.protocol_options),
            "params": dict(self.params),
            "views": self.views,
            "prompts": self.prompts,
        }

    @property
    def hash(self) -> str:
        """``cell_hash(self.to_dict())``."""
        return cell_hash(self.to_dict())

    def __hash__(self) -> int:
        return hash(self.hash)


# -- the config ---------------------------------------------------------------------------
def _registered() -> list[str]:
    from fewclip import methods

    return methods.available()


def _param_names(method: str) -> list[str]:
    from fewclip import methods

    return sorted(methods.get(method)._get_param_names())


def _as_tuple(key: str, value: Any, kind: type) -> tuple[Any, ...]:
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{key}: expected a list, found {value!r}")
    out = []
    for v in value:
        if kind is int:
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"{key}: expected integers, found {v!r}")
        elif not isinstance(v, str) or not v:
            raise ConfigError(f"{key}: expected non-empty strings, found {v!r}")
        out.append(v)
    if not out:
        raise ConfigError(f"{key}: expected at least one entry, found an empty list")
    dup = sorted({str(v) for v in out if out.count(v) > 1})
    if dup:
        raise ConfigError(f"{key}: duplicate entries {', '.join(dup)}")
    return tuple(out)


def _as_mapping(key: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a mapping, found {value!r}")
    return dict(value)


@dataclass(frozen=True)
class BenchConfig:
    """A benchmark grid (frozen; build variants with ``with_overrides``).

    Attributes:
        methods: registered method names, in table order (``"all"`` expands to every
            registered method, in registry order).
        datasets: dataset names, as the ``prepare`` callable of ``run_bench`` understands them
            (CoOp benchmark names for the CLI; ``fewclip.testing.PRESETS`` names for synthetic
            worlds).
        shots: K images per class, ascending in tables (default: 1, 2, 4, 8, 16; 16 under a
            generalisation protocol, as the papers).
        seeds: draw seeds (CoOp: 1, 2, 3); a method with a ``seed`` hyper-parameter also gets
            the cell's seed unless ``params`` sets it.
        backbones: backbone names, as ``prepare`` understands them.
        protocol: one of ``fewclip.protocol.PROTOCOLS`` (what validates, on the classes of
            the test), or one of ``fewclip.generalisation.GENERALISATION_PROTOCOLS``
            (``base-to-new``, ``cross-dataset``, ``domain-generalisation``: fit on some classes
            or one domain, test on others).
        protocol_options: extra ``fewclip.protocol.Protocol`` fields (``val_shots``,
            ``repeat``, ``allow_fewer``); under a generalisation protocol also ``validation``
            (the validation protocol it selects on; default and filled in: ``fewshot-val``;
            never ``oracle-test``) and, for ``cross-dataset`` and ``domain-generalisation``,
            ``targets`` (the datasets tested besides each source; filled in by default:
            ``fewclip.generalisation.CROSS_DATASET_TARGETS`` / ``DOMAIN_TARGETS``).
        params: method name → hyper-parameters (constructor keyword arguments).
        dataset_params: dataset name → method name → hyper-parameters, merged over ``params``
            (Tip-Adapter's per-dataset search ranges, EuroSAT's 100 epochs).
        views: augmented views per support image used by the methods (the first ``views`` of
            the stored bank); ``None`` = all the source has.
        prompts: prompt-set name recorded with every cell (``fewclip.data.prompts``:
            ``default``, ``single``, ``imagenet-7``, ...); ``prepare`` builds text weights with it.
        device: device passed to methods that take a ``device`` parameter (not part of a cell:
            a cell run on CPU or GPU is the same cell).
    """

    methods: tuple[str, ...] = DEFAULT_METHODS
    datasets: tuple[str, ...] = ("imagenet",)
    shots: tuple[int, ...] | None = None
    seeds: tuple[int, ...] = (1, 2, 3)
    backbones: tuple[str, ...] = ("RN50",)
    protocol: str = "fewshot-val"
    protocol_options: Mapping[str, Any] = field(default_factory=dict)
    params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    dataset_params: Mapping[str, Mapping[str, Mapping[str, Any]]] = field(default_factory=dict)
    views: int | None = None
    prompts: str = "default"
    device: str = "cpu"

    def __post_init__(self) -> None:
        from fewclip.generalisation import GENERALISATION_PROTOCOLS
        from fewclip.protocol import PROTOCOLS, Protocol

        registered = _registered()
        methods: Any = self.methods
        if isinstance(methods, str):
            methods = [methods]
        if isinstance(methods, (list, tuple)) and list(methods) == ["all"]:
            methods = registered
        methods = _as_tuple("methods", methods, str)
        unknown = [m for m in methods if m not in registered]
        if unknown:
            raise ConfigError(
                f"methods: unknown method(s) {', '.join(map(repr, unknown))}; registered: "
                f"{', '.join(registered)} (or 'all')"
            )
        object.__setattr__(self, "methods", methods)
        object.__setattr__(self, "datasets", _as_tuple("datasets", self.datasets, str))
        object.__setattr__(self, "backbones", _as_tuple("backbones", self.backbones, str))
        known = (*PROTOCOLS, *GENERALISATION_PROTOCOLS)
        if self.protocol not in known:
            raise ConfigError(
                f"protocol: expected one of {', '.join(known)}, found {self.protocol!r}"
            )
        general = self.protocol in GENERALISATION_PROTOCOLS
        shots = self.shots
        if shots is None:
            shots = GENERALISATION_SHOTS if general else DEFAULT_SHOTS
        shots = _as_tuple("shots", shots, int)
        if min(shots) < 1:
            raise ConfigError(f"shots: expected positive integers, found {list(shots)}")
        object.__setattr__(self, "shots", tuple(sorted(shots)))
        object.__setattr__(self, "seeds", _as_tuple("seeds", self.seeds, int))
        popts = self._protocol_options(general)
        validation = popts.get("validation", self.protocol)
        rest = {k: v for k, v in popts.items() if k in _PROTOCOL_OPTIONS}
        try:
            Protocol(validation, **rest)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"protocol_options: {e}") from None
        object.__setattr__(self, "protocol_options", popts)
        params = _as_mapping("params", self.params)
        for m, p in params.items():
            params[m] = self._check_params(f"params.{m}", m, p, registered)
        object.__setattr__(self, "params", params)
        dparams = _as_mapping("dataset_params", self.dataset_params)
        for d, per_method in dparams.items():
            per = _as_mapping(f"dataset_params.{d}", per_method)
            for m, p in per.items():
                per[m] = self._check_params(f"dataset_params.{d}.{m}", m, p, registered)
            dparams[d] = per
        object.__setattr__(self, "dataset_params", dparams)
        if self.views is not None and (
            isinstance(self.views, bool) or not isinstance(self.views, int) or self.views < 1
        ):
            raise ConfigError(f"views: expected a positive integer or null, found {self.views!r}")
        for key in ("prompts", "device"):
            v = getattr(self, key)
            if not isinstance(v, str) or not v:
                raise ConfigError(f"{key}: expected a non-empty string, found {v!r}")
        canonical_json(self.to_dict())  # JSON-able, finite

    def _protocol_options(self, general: bool) -> dict[str, Any]:
        """``protocol_options`` checked, with a generalisation protocol's defaults filled in
        (``validation``; ``targets`` of a transfer protocol)."""
        from fewclip.generalisation import (
            CROSS_DATASET,
            CROSS_DATASET_TARGETS,
            DOMAIN_TARGETS,
            TRANSFER_PROTOCOLS,
            VALIDATION_PROTOCOLS,
        )

        popts = _as_mapping("protocol_options", self.protocol_options)
        valid = list(_PROTOCOL_OPTIONS)
        if general:
            valid.append("validation")
        if self.protocol in TRANSFER_PROTOCOLS:
            valid.append("targets")
        bad = sorted(set(popts) - set(valid))
        if bad:
            only = ""
            if {"validation", "targets"} & set(bad):
                only = (
                    " (validation only under a generalisation protocol, targets under "
                    f"{' and '.join(TRANSFER_PROTOCOLS)})"
                )
            raise ConfigError(
                f"protocol_options: unknown option(s) {', '.join(bad)}; valid: "
                f"{', '.join(valid)} under protocol {self.protocol!r}{only}"
            )
        if not general:
            return popts
        validation = popts.setdefault("validation", "fewshot-val")
        if validation not in VALIDATION_PROTOCOLS:
            raise ConfigError(
                f"protocol_options.validation: expected one of {', '.join(VALIDATION_PROTOCOLS)} "
                f"under {self.protocol}, found {validation!r} (the generalisation protocols "
                "never select on test images)"
            )
        if self.protocol in TRANSFER_PROTOCOLS:
            default = CROSS_DATASET_TARGETS if self.protocol == CROSS_DATASET else DOMAIN_TARGETS
            targets = _as_tuple("protocol_options.targets", popts.get("targets", default), str)
            sources = [t for t in targets if t in self.datasets]
            if sources:
                raise ConfigError(
                    f"protocol_options.targets: {', '.join(sources)} is also a source dataset; "
                    "the source's own test set is always reported, as the first column"
                )
            popts["targets"] = list(targets)
        return popts

    @staticmethod
    def _check_params(where: str, method: str, p: Any, registered: Sequence[str]) -> dict[str, Any]:
        if method not in registered:
            raise ConfigError(
                f"{where}: unknown method {method!r}; registered: {', '.join(registered)}"
            )
        p = _as_mapping(where, p)
        valid = _param_names(method)
        bad = sorted(set(p) - set(valid))
        if bad:
            raise ConfigError(
                f"{where}: unknown hyper-parameter(s) {', '.join(bad)} of {method!r}; valid: "
                f"{', '.join(valid)}"
            )
        return p

    def __hash__(self) -> int:
        return hash(canonical_json(self.to_dict()))

    # -- serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-able form; ``BenchConfig.from_dict(c.to_dict()) == c``."""
        return {
            "methods": list(self.methods),
            "datasets": list(self.datasets),
            "shots": list(self.shots or ()),
            "seeds": list(self.seeds),
            "backbones": list(self.backbones),
            "protocol": self.protocol,
            "protocol_options": dict(self.protocol_options),
            "params": {m: dict(p) for m, p in self.params.items()},
            "dataset_params": {
                d: {m: dict(p) for m, p in per.items()} for d, per in self.dataset_params.items()
            },
            "views": self.views,
            "prompts": self.prompts,
            "device": self.device,
        }

    def to_yaml(self) -> str:
        """The config as YAML (loadable by ``load_config``)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def keys(cls) -> list[str]:
        """The valid top-level keys."""
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "config") -> BenchConfig:
        """Build from a mapping; an unknown key raises ``ConfigError`` naming it and listing the
        valid ones."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected a mapping of config keys, found {data!r}")
        valid = cls.keys()
        unknown = [k for k in data if k not in valid]
        if unknown:
            raise ConfigError(
                f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; valid keys: "
                f"{', '.join(valid)}"
            )
        try:
            return cls(**dict(data))
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None

    def with_overrides(self, overrides: Sequence[str]) -> BenchConfig:
        """A copy with ``key=value`` overrides applied (see the module docstring)."""
        return BenchConfig.from_dict(apply_overrides(self.to_dict(), overrides))

    # -- the grid ---------------------------------------------------------------------------
    def method_params(self, method: str, dataset: str) -> dict[str, Any]:
        """Explicit hyper-parameters of ``method`` on ``dataset``: ``params`` updated with
        ``dataset_params``."""
        out = dict(self.params.get(method, {}))
        out.update(self.dataset_params.get(dataset, {}).get(method, {}))
        return out

    def cells(self) -> Iterator[Cell]:
        """Every cell, in run order: dataset → backbone → shots → seed → method. Each
        dataset/backbone's features are needed during one stretch of the run, the methods of
        one draw run back to back (a source can reuse the rows it just read), and an
        interrupted run has every method at the shot counts it reached."""
        for dataset in self.datasets:
            for backbone in self.backbones:
                for shots in self.shots or ():
                    for seed in self.seeds:
                        for method in self.methods:
                            params = self.method_params(method, dataset)
                            yield Cell(
                                method=method,
                                dataset=dataset,
                                backbone=backbone,
                                shots=shots,
                                seed=seed,
                                protocol=self.protocol,
                                protocol_options=dict(self.protocol_options),
                                params=params,
                                views=self.views,
                                prompts=self.prompts,
                            )

    @property
    def n_cells(self) -> int:
        return (
            len(self.datasets)
            * len(self.backbones)
            * len(self.methods)
            * len(self.shots or ())
            * len(self.seeds)
        )


# -- overrides ----------------------------------------------------------------------------
def _parse_value(text: str, where: str) -> Any:
    s = text.strip()
    try:
        if "," in s and not s.startswith(("[", "{", '"', "'")):
            return [_yaml_load(p.strip()) for p in s.split(",") if p.strip()]
        return _yaml_load(s) if s else None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: cannot parse value {text!r} ({e})") from None


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key=value`` overrides to a config mapping (returns a new mapping).

    ``key`` is a top-level config key or a dotted path into ``params``, ``dataset_params`` or
    ``protocol_options`` (``params.tip-adapter.alpha``). An unknown top-level key raises
    ``ConfigError`` naming it and listing the valid keys; unknown method names and
    hyper-parameters are reported when the config is built.
    """
    try:
        out: dict[str, Any] = json.loads(json.dumps(dict(data)))  # deep copy
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config: expected JSON-able values ({e})") from None
    valid = BenchConfig.keys()
    nested = {"params": 2, "dataset_params": 3, "protocol_options": 1}
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r}: expected key=value (e.g. shots=1,2,4)")
        key, _, text = ov.partition("=")
        key = key.strip()
        parts = key.split(".")
        head = parts[0]
        if head not in valid:
            raise ConfigError(
                f"override {ov!r}: unknown key {head!r}; valid keys: {', '.join(valid)}"
            )
        depth = len(parts) - 1
        if depth and head not in nested:
            raise ConfigError(
                f"override {ov!r}: {head!r} is not a mapping; dotted keys work under "
                f"{', '.join(nested)}"
            )
        if depth and depth > nested[head]:
            raise ConfigError(f"override {ov!r}: {head} takes at most {nested[head]} dotted levels")
        if any(not p for p in parts):
            raise ConfigError(f"override {ov!r}: empty component in key {key!r}")
        value = _parse_value(text, f"override {ov!r}")
        if head in ("methods", "datasets", "shots", "seeds", "backbones") and not isinstance(
            value, list
        ):
            value = [value]
        target = out
        for p in parts[:-1]:
            nxt = target.get(p)
            if nxt is None:
                nxt = target[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {ov!r}: {p!r} is not a mapping")
            target = nxt
        target[parts[-1]] = value
    return out


# -- files and presets --------------------------------------------------------------------
def presets() -> list[str]:
    """Names of the packaged presets (``src/fewclip/bench/presets/*.yaml``)."""
    root = resources.files("fewclip.bench") / "presets"
    return sorted(p.name[: -len(".yaml")] for p in root.iterdir() if p.name.endswith(".yaml"))


def _read_yaml(text: str, where: str) -> dict[str, Any]:
    try:
        data = _yaml_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML ({e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{where}: expected a mapping of config keys, found {type(data).__name__}"
        )
    return data


def load_config(
    source: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
) -> BenchConfig:
    """A ``BenchConfig`` from a YAML file, a preset name, a mapping or nothing / ``"defaults"``
    (the defaults), with ``key=value`` overrides applied in order.

    A ``source`` that names an existing file is read as YAML; otherwise it must be a preset name
    (``presets()``), else ``ConfigError`` lists the presets.
    """
    if source is None or source == "defaults":
        data: dict[str, Any] = {}
        where = "defaults"
    elif isinstance(source, Mapping):
        data, where = dict(source), "config"
    else:
        path = Path(source)
        if path.is_file():
            where = str(path)
            data = _read_yaml(path.read_text(encoding="utf-8"), where)
        else:
            name = os.fspath(source)
            if name not in presets():
                from fewclip.errors import did_you_mean

                raise ConfigError(
                    f"config {name!r}: no such file and no such preset"
                    f"{did_you_mean(name, presets())}; presets: {', '.join(presets())} "
                    "(or defaults)"
                )
            where = f"preset {name!r}"
            res = resources.files("fewclip.bench") / "presets" / f"{name}.yaml"
            data = _read_yaml(res.read_text(encoding="utf-8"), where)
    valid = BenchConfig.keys()
    unknown = [k for k in data if k not in valid]
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; valid keys: "
            f"{', '.join(valid)}"
        )
    data = apply_overrides(data, overrides)
    return BenchConfig.from_dict(data, where=where)
