"""One bench cell under a generalisation protocol (:mod:`fewclip.generalisation`).

``run_generalisation`` plans, fits and evaluates one cell of ``base-to-new``,
``cross-dataset`` or ``domain-generalisation`` and returns what ``fewclip.bench.runner`` turns
into a row. The row's ``accuracy`` and ``n_test`` are those of the classes the method was fitted
on (the base classes; the source dataset's test set), and the protocol adds:

- ``validation``: the validation protocol hyper-parameters and epochs were selected on;
- base-to-new: ``splits`` = ``{"base": {...}, "new": {...}}``, each with ``accuracy`` (%),
  ``n`` (test images) and ``classes`` (their class ids in the dataset), and ``harmonic``
  (H of base and new, %);
- cross-dataset and domain-generalisation: ``targets`` = ``{name: {...}}`` with ``accuracy``,
  ``n``, ``classes`` (how many), ``class_subset`` (domain generalisation: how many source
  classes were scored, 200 for ImageNet-A/-R), ``fingerprint`` and ``toy``; and
  ``target_average`` (mean over the targets);
- ``not_applicable``: ``None``, or why the method cannot score classes it was not fitted on
  (``Method.new_class_refusal``): then the new split's and the cross-dataset targets'
  ``accuracy`` is ``None`` and they carry the same ``reason``; H and the average are ``None``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from fewclip.bench.config import Cell
from fewclip.bench.runner import BenchError, CellOutcome, Prepared
from fewclip.errors import InvalidValueError
from fewclip.generalisation import (
    BASE_TO_NEW,
    DOMAIN_GENERALISATION,
    ClassSubsetSource,
    average,
    base_new_split,
    check_class_mapping,
    harmonic_mean,
    subset_plan,
)
from fewclip.protocol import EvalResult, FeatureSource, Protocol, build_task, evaluate

__all__ = ["domain_index", "run_generalisation"]


def domain_index(source: Prepared, target: Prepared, name: str) -> list[int] | None:
    """The source's class id of each class of a domain-generalisation ``target`` (``None``:
    all of the source's classes, in order), checked by name
    (:func:`fewclip.generalisation.check_class_mapping`).

    With ``class_ids`` on both (the ImageNet family's ImageNet-1k ids), the map follows them, so
    a target keeps its own classes whatever their number (ImageNet-A/-R: 200; a Sketch folder
    missing classes); otherwise it is the target's ``class_index``.
    """
    index: list[int] | None
    if source.class_ids is not None and target.class_ids is not None:
        position = {int(c): i for i, c in enumerate(source.class_ids)}
        missing = [int(c) for c in target.class_ids if int(c) not in position]
        if missing:
            raise InvalidValueError(
                f"{name}: {len(missing)} of its classes (ids {missing[:5]}) are not among the "
                "source's; domain generalisation tests the source's classes in other domains"
            )
        index = [position[int(c)] for c in target.class_ids]
    else:
        index = None if target.class_index is None else [int(i) for i in target.class_index]
    if index == list(range(len(source.classnames))):
        index = None
    check_class_mapping(source.classnames, target.classnames, index, target=name)
    return index


def _pct(result: EvalResult) -> float:
    return round(100.0 * result.accuracy, 6)


def run_generalisation(
    cell: Cell,
    prepared: Prepared,
    source: FeatureSource,
    params: Mapping[str, Any],
    meta: Mapping[str, Any],
    clock: Any,
    *,
    eval_rows: int | None,
    wrap: Callable[[Any, int], Any],
) -> CellOutcome:
    """Run ``cell`` (a generalisation protocol) on ``prepared``'s ``source``; ``clock.mark()``
    is called before and after ``fit`` and after the evaluations; ``wrap(model, rows)`` scores
    a model ``rows`` test rows at a time."""
    from fewclip import methods
    from fewclip.methods.base import NewClassesError

    opts = dict(cell.protocol_options)
    validation = str(opts.pop("validation", "fewshot-val"))
    targets = list(opts.pop("targets", []) or [])
    proto = Protocol(validation, **opts)
    cls = methods.get(cell.method)
    names = list(prepared.classnames)

    def scored(model: Any) -> Any:
        return model if eval_rows is None else wrap(model, eval_rows)

    def fit(plan: Any, src: FeatureSource, classes: list[int] | None) -> tuple[Any, Any, Any]:
        if not cls.uses_validation:
            plan = dataclasses.replace(plan, val=None)  # never loaded (see run_cell)
        weights = prepared.text_weights
        task = build_task(
            plan,
            src,
            classnames=names if classes is None else [names[c] for c in classes],
            text_weights=weights if classes is None else weights[classes],
            meta=meta,
            text_tower=prepared.text_tower,
        )
        model = methods.create(cell.method, **params)
        clock.mark()
        model.fit(task)
        clock.mark()
        return plan, task, model

    refusal = cls.new_class_refusal
    extra: dict[str, Any] = {"validation": validation}
    if cell.protocol == BASE_TO_NEW:
        base, new = base_new_split(source.labels("train"))
        base_src = ClassSubsetSource(source, base)
        # the whole dataset's few-shot draw, restricted to the base classes (the reference's
        # split files are drawn before subsampling the classes)
        whole = proto.plan_source(source, shots=cell.shots, seed=cell.seed, classnames=names)
        plan, task, model = fit(subset_plan(whole, base_src), base_src, base)
        result = evaluate(scored(model), base_src, plan, n_classes=len(base), meta=meta)
        new_entry: dict[str, Any] = {"accuracy": None, "n": None, "classes": new}
        if refusal is None:
            try:
                other = model.for_classes(
                    [names[c] for c in new],
                    prepared.text_weights[new],
                    text_tower=prepared.text_tower,
                )
            except NewClassesError as e:
                refusal = str(e)
            else:
                res_new = evaluate(
                    scored(other),
                    ClassSubsetSource(source, new),
                    plan,
                    n_classes=len(new),
                    meta=meta,
                )
                new_entry.update(accuracy=_pct(res_new), n=res_new.n)
        else:
            refusal = f"{cell.method} cannot score classes it was not fitted on: {refusal}"
        if refusal is not None:
            new_entry["reason"] = refusal
        clock.mark()
        base_acc = _pct(result)
        h = harmonic_mean(base_acc, new_entry["accuracy"])
        extra.update(
            splits={
                "base": {"accuracy": base_acc, "n": result.n, "classes": base},
                "new": new_entry,
            },
            harmonic=None if h is None else round(h, 6),
            not_applicable=refusal,
        )
        return CellOutcome(plan, task, model, result, extra)

    # cross-dataset and domain generalisation: fit on the whole source
    whole = proto.plan_source(source, shots=cell.shots, seed=cell.seed, classnames=names)
    plan, task, model = fit(whole, source, None)
    result = evaluate(
        scored(model),
        source,
        plan,
        class_index=prepared.class_index,
        n_classes=len(names if prepared.class_index is None else prepared.class_index),
        meta=meta,
    )
    domain = cell.protocol == DOMAIN_GENERALISATION
    if not domain and refusal is not None:
        refusal = f"{cell.method} cannot score classes it was not fitted on: {refusal}"
    rows: dict[str, dict[str, Any]] = {}
    for name in targets:
        target = prepared.targets.get(name)
        if target is None:
            raise BenchError(
                f"{cell.protocol}: no prepared target {name!r} (run_bench prepares the "
                "config's protocol_options.targets; pass them in Prepared.targets)"
            )
        entry: dict[str, Any] = {
            "accuracy": None,
            "n": None,
            "classes": len(target.classnames),
            "fingerprint": target.fingerprint,
            "toy": bool(target.toy),
        }
        tmeta = {**meta, "target": name}
        if domain:
            # the same classes in another domain: the fitted classifier, restricted to the
            # target's classes (ImageNet-A/-R: 200 of ImageNet's 1000 columns)
            index = domain_index(prepared, target, name)
            r = evaluate(
                scored(model),
                target.source,
                plan,
                class_index=index,
                n_classes=len(target.classnames),
                meta=tmeta,
            )
            entry.update(accuracy=_pct(r), n=r.n)
            if index is not None:
                entry["class_subset"] = len(index)
        elif refusal is None:
            try:
                other = model.for_classes(
                    list(target.classnames),
                    target.text_weights,
                    text_tower=prepared.text_tower or target.text_tower,
                )
            except NewClassesError as e:
                refusal = str(e)
            else:
                r = evaluate(
                    scored(other),
                    target.source,
                    plan,
                    n_classes=len(target.classnames),
                    meta=tmeta,
                )
                entry.update(accuracy=_pct(r), n=r.n)
        if entry["accuracy"] is None and refusal is not None:
            entry["reason"] = refusal
        rows[name] = entry
    clock.mark()
    if refusal is not None:  # a csc refusal found at the second target: say it everywhere
        for entry in rows.values():
            if entry["accuracy"] is None:
                entry["reason"] = refusal
    avg = average({k: v["accuracy"] for k, v in rows.items()})
    extra.update(
        targets=rows,
        target_average=None if avg is None else round(avg, 6),
        not_applicable=None if domain else refusal,
    )
    return CellOutcome(plan, task, model, result, extra)
