"""The conformance suite every method must pass (like scikit-learn's ``check_estimator``).

>>> from fewclip import methods
>>> from fewclip.testing import check_method
>>> check_method(methods.get("tip-adapter"))  # raises AssertionError naming the failed check

Each check fits the method on small generated feature tasks (feature world only: no images,
no backbone) with the method's ``quick_params`` and asserts one part of the contract:

- ``fit`` returns ``self``; ``logits``/``predict``/``predict_proba``/``score`` agree;
- logits computed in row blocks equal one block; save → load gives identical logits (a method
  that ``predicts_with_text_tower`` refuses to score until its tower is attached, then does);
- float64, float32 and float16 fits give logits of that dtype, finite, and the same answers;
- use before ``fit`` raises ``NotFittedError``; bad queries and a non-task raise
  ``FewclipError`` subclasses naming the input;
- ``get_params``/``set_params``/``clone`` follow scikit-learn's rules;
- a second fit with the same seed gives identical logits;
- ``fit_seeds`` of copies that differ only in seed gives each copy its own ``fit``'s logits
  (and batches them when the method sets ``batches_seeds``);
- legitimate small inputs work or raise a clear ``FewclipError``: one shot with no and with one
  augmented view, two classes, a thousand classes, a class with a single image, no validation;
- a method that declares ``uses_validation = False`` fits the same with or without one;
- a method that can score new classes (``new_class_refusal = None``) gives, through
  ``for_classes``, the same scores for its own classes and finite (N, C') scores for others,
  and leaves itself unchanged; any other refuses with ``NewClassesError`` giving its reason.

A third-party method registered with ``fewclip.methods.register`` can run the same suite in its
own tests: ``for name, check in method_checks(MyMethod): check()``.
"""

from __future__ import annotations

import inspect
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fewclip.errors import (
    FewclipError,
    InvalidTypeError,
    InvalidValueError,
    OutputFolderError,
    UnknownParameterError,
)
from fewclip.methods import base
from fewclip.methods.base import Method, NewClassesError, NotFittedError
from fewclip.task import FeatureSet, Task
from fewclip.testing.text_tower import ToyTextTower

__all__ = ["check_method", "make_task", "method_checks"]


def make_task(
    n_classes: int = 5,
    shots: int | list[int] = 4,
    *,
    dim: int = 16,
    views: int = 3,
    val: bool = True,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Task:
    """A small CLIP-like feature task: class means in ``dim`` dimensions, support features
    scattered around them, ``views`` augmented views (0: none), a 2-per-class validation set
    (``val``) and noisy unit-norm text weights near the means. ``shots`` is one count for every
    class or one count per class."""
    g = torch.Generator().manual_seed(seed)
    counts = [shots] * n_classes if isinstance(shots, int) else list(shots)
    means = torch.randn(n_classes, dim, generator=g, dtype=dtype)
    labels = torch.cat([torch.full((k,), c, dtype=torch.long) for c, k in enumerate(counts)])
    feats = 3 * (means[labels] + 0.7 * torch.randn(len(labels), dim, generator=g, dtype=dtype))
    bank = None
    if views:
        noise = torch.randn(views, len(labels), dim, generator=g, dtype=dtype)
        bank = feats + 0.2 * noise
    text = torch.nn.functional.normalize(
        means + torch.randn(n_classes, dim, generator=g, dtype=dtype), dim=1
    )
    val_set = None  # drawn last: the rest of the task is the same with or without it
    if val:
        vy = torch.arange(n_classes).repeat_interleave(2)
        vx = 3 * (means[vy] + 0.7 * torch.randn(len(vy), dim, generator=g, dtype=dtype))
        val_set = FeatureSet(vx, vy)
    return Task(
        [f"class {i}" for i in range(n_classes)],
        text,
        FeatureSet(feats, labels, bank),
        val_set,
        text_tower=ToyTextTower(dim, seed=seed),
    )


def _queries(dim: int = 16, n: int = 9, dtype: torch.dtype = torch.float32) -> Tensor:
    return 3 * torch.randn(n, dim, generator=torch.Generator().manual_seed(5), dtype=dtype)


def _cast(task: Task, dtype: torch.dtype) -> Task:
    """``task`` with every feature tensor in ``dtype``."""

    def cast(fs: FeatureSet | None) -> FeatureSet | None:
        if fs is None:
            return None
        views = None if fs.views is None else fs.views.to(dtype)
        return FeatureSet(fs.features.to(dtype), fs.labels, views)

    support = cast(task.support)
    assert support is not None
    return Task(
        task.classnames,
        task.text_weights.to(dtype),
        support,
        cast(task.val),
        text_tower=task.text_tower,
    )


def _create(cls: type[Method], params: Mapping[str, Any], **extra: Any) -> Method:
    return cls(**{**cls.quick_params, **params, **extra})


@contextmanager
def _predict_rows(rows: int) -> Iterator[None]:
    old = base.PREDICT_ROWS
    base.PREDICT_ROWS = rows
    try:
        yield
    finally:
        base.PREDICT_ROWS = old


def _expect(error: type[BaseException], match: str, fn: Callable[[], Any], what: str) -> None:
    """``fn()`` must raise ``error`` (a FewclipError) whose message contains ``match``."""
    caught: BaseException | None = None
    try:
        fn()
    except Exception as e:
        caught = e
    if caught is None:
        raise AssertionError(f"{what}: expected {error.__name__}, nothing was raised")
    if not isinstance(caught, error):
        raise AssertionError(f"{what}: expected {error.__name__}, got {caught!r}") from caught
    assert isinstance(caught, FewclipError), f"{what}: {caught!r} is not a FewclipError"
    assert match in str(caught), f"{what}: message {str(caught)!r} does not contain {match!r}"


def _fits_or_clear_error(method: Method, task: Task, what: str) -> bool:
    """Fit ``method``; True if it fitted (then its logits must be finite), False if it refused
    with a ``FewclipError`` (legitimate input must work or get a clear error)."""
    try:
        method.fit(task)
    except FewclipError:
        return False
    except Exception as e:
        raise AssertionError(
            f"{what}: fit raised {type(e).__name__} ({e}); legitimate input must fit or raise "
            "a FewclipError that says why"
        ) from e
    out = method.logits(task.support.features)
    assert out.shape == (task.support.n, task.n_classes), f"{what}: logits shape {out.shape}"
    assert torch.isfinite(out).all(), f"{what}: non-finite logits"
    return True


# -- the checks ------------------------------------------------------------------------------
def check_traits(cls: type[Method], params: Mapping[str, Any]) -> None:
    """Traits are declared with the right types; ``quick_params`` names real parameters."""
    assert isinstance(cls.training_free, bool), "training_free: expected a bool"
    assert isinstance(cls.uses_validation, bool), "uses_validation: expected a bool"
    names = set(cls._get_param_names())
    unknown = set(cls.quick_params) - names
    assert not unknown, f"quick_params: {sorted(unknown)} are not parameters of {cls.__name__}"
    assert cls.name in base.available(), f"{cls.__name__} is not registered"
    if cls.training_free:
        trained = names & {"epochs", "iters"}
        assert not trained, f"{cls.__name__} declares training_free but takes {sorted(trained)}"
    assert isinstance(cls.needs_text_tower, bool), "needs_text_tower: expected a bool"
    assert isinstance(cls.predicts_with_text_tower, bool), "predicts_with_text_tower: a bool"
    if cls.predicts_with_text_tower:
        assert cls.needs_text_tower, (
            f"{cls.__name__} predicts with the text tower but does not declare needs_text_tower"
        )
        assert cls.export_refusal, (
            f"{cls.__name__} predicts with the text tower, which a feature-level export cannot "
            "hold: declare export_refusal with the reason"
        )
    chooses = cls.chooses_on_validation
    assert isinstance(chooses, frozenset), "chooses_on_validation: expected a frozenset"
    assert chooses <= {"search", "epoch"}, f"chooses_on_validation: unknown {sorted(chooses)}"
    assert not chooses or cls.uses_validation, (
        f"{cls.__name__} chooses {sorted(chooses)} on validation but declares "
        "uses_validation = False"
    )


def _task_tensors(task: Task) -> dict[str, Tensor]:
    """Copies of every tensor a task holds, by name."""
    out = {"text_weights": task.text_weights.clone()}
    for split, fs in (("support", task.support), ("val", task.val)):
        if fs is None:
            continue
        out[f"{split}.features"], out[f"{split}.labels"] = fs.features.clone(), fs.labels.clone()
        if fs.views is not None:
            out[f"{split}.views"] = fs.views.clone()
    return out


def check_fit_and_predict(cls: type[Method], params: Mapping[str, Any]) -> None:
    """``fit`` returns self; logits (N, C) finite; predict, predict_proba and score agree;
    neither fit nor logits warns on this ordinary task (a warning is for the user to act on)
    or changes the tensors it was given (the user's features, views, labels, text weights)."""
    task, x = make_task(), _queries()
    m = _create(cls, params)
    before = _task_tensors(task)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert m.fit(task) is m, "fit must return self"
        logits = m.logits(x)
    for name, t in _task_tensors(task).items():
        assert torch.equal(t, before[name]), f"fit changed the task's {name} in place"
    assert torch.equal(x, _queries()), "logits changed the queries in place"
    assert logits.shape == (9, task.n_classes), f"logits shape {tuple(logits.shape)}"
    assert logits.dtype == torch.float32, f"logits are {logits.dtype}"
    assert torch.isfinite(logits).all(), "non-finite logits"
    assert torch.equal(m.predict(x), logits.argmax(1)), "predict must be argmax of logits"
    proba = m.predict_proba(x)
    torch.testing.assert_close(proba.sum(1), torch.ones(9))
    assert torch.equal(proba.argmax(1), logits.argmax(1))
    y = m.predict(x)
    assert m.score(x, y) == 1.0, "score of the method's own predictions"
    assert m.score(x, (y + 1) % task.n_classes) == 0.0, "score of wrong labels"
    assert m.classnames_ == task.classnames, "classnames_"
    assert m.classes_ == list(range(task.n_classes)), "classes_"
    assert m.n_features_in_ == task.dim


def check_extreme_queries(cls: type[Method], params: Mapping[str, Any]) -> None:
    """No rows get a (0, C) answer in the logits' dtype; a zero row gets finite scores; rows
    scaled by 1e±30 (float32) or 1e±300 (float64) get finite scores and the predictions of
    the same rows at unit norm (every method scores the direction of a query: CLIP features
    are compared by cosine)."""
    task = make_task()
    m = _create(cls, params).fit(task)
    for dtype, scales in ((torch.float32, (1e-30, 1e30)), (torch.float64, (1e-300, 1e300))):
        x = _queries(dtype=dtype)
        unit = m.predict(x / x.norm(dim=1, keepdim=True))
        zero = m.logits(torch.zeros(2, task.dim, dtype=dtype))
        assert torch.isfinite(zero).all(), f"non-finite logits for a zero {dtype} row"
        none = m.logits(torch.zeros(0, task.dim, dtype=dtype))
        assert none.shape == (0, task.n_classes), f"no {dtype} rows: logits {none.shape}"
        assert none.dtype == zero.dtype, f"no {dtype} rows: logits in {none.dtype}"
        assert m.predict(torch.zeros(0, task.dim, dtype=dtype)).shape == (0,), "no rows: predict"
        for s in scales:
            logits = m.logits(x * s)
            assert torch.isfinite(logits).all(), f"non-finite logits for {dtype} rows × {s:g}"
            assert torch.equal(logits.argmax(1), unit), f"{dtype} rows × {s:g}: other predictions"


def check_blocked_logits(cls: type[Method], params: Mapping[str, Any]) -> None:
    """Logits computed in blocks of 2 rows, or one row at a time, equal one block."""
    task, x = make_task(), _queries()
    m = _create(cls, params).fit(task)
    whole = m.logits(x)
    with _predict_rows(2):
        torch.testing.assert_close(m.logits(x), whole, rtol=1e-5, atol=1e-5)
    rows = torch.cat([m.logits(x[i : i + 1]) for i in range(len(x))])
    torch.testing.assert_close(rows, whole, rtol=1e-5, atol=1e-5)


def check_save_load(cls: type[Method], params: Mapping[str, Any]) -> None:
    """save → load (``methods.load`` and ``cls.load``) gives identical logits and params; an
    existing folder is replaced only with ``overwrite=True``. A method that
    ``predicts_with_text_tower`` loads without one: it refuses to score, with an error naming
    ``attach_text_tower``, until the task's tower is attached."""
    task, x = make_task(), _queries()
    m = _create(cls, params).fit(task)
    assert m.can_score, "a fitted method must be able to score"

    def ready(loaded: Method) -> Method:
        if cls.predicts_with_text_tower:
            assert not loaded.can_score, "loaded without a tower, it cannot score yet"
            _expect(FewclipError, "attach_text_tower", lambda: loaded.logits(x), "logits, no tower")
            assert loaded.attach_text_tower(task.text_tower) is loaded
        assert loaded.can_score
        return loaded

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "m"
        m.save(folder)
        for loaded in (base.load(folder), cls.load(folder)):
            assert type(loaded) is cls
            assert torch.equal(ready(loaded).logits(x), m.logits(x)), "loaded logits differ"
            assert loaded.get_params() == m.get_params(), "loaded params differ"
        _expect(OutputFolderError, "--overwrite", lambda: m.save(folder), "save over a save")
        m.save(folder, overwrite=True)
        assert torch.equal(ready(base.load(folder)).logits(x), m.logits(x))
        leftovers = [p.name for p in Path(tmp).iterdir() if p.name != "m"]
        assert not leftovers, f"save left {leftovers} beside the folder"


def check_dtypes(cls: type[Method], params: Mapping[str, Any]) -> None:
    """float64 and float16 fits give logits of that dtype, finite, and mostly the float32
    answers (float16 is fitted on float32 features, as a float16 store would hand them), and
    keep their fitted floating-point tensors in that dtype."""
    x, task = _queries(), make_task()
    ref = _create(cls, params).fit(task).predict(x)
    for dtype in ("float64", "float16"):
        features = torch.float64 if dtype == "float64" else torch.float32
        m = _create(cls, params, dtype=dtype).fit(_cast(task, features))
        out = m.logits(x.to(features))
        want = getattr(torch, dtype)
        assert out.dtype == want, f"dtype={dtype}: logits are {out.dtype}"
        assert torch.isfinite(out).all(), f"dtype={dtype}: non-finite logits"
        for name in cls._state_tensors:
            t = getattr(m, name)
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                assert t.dtype == want, f"dtype={dtype}: fitted {name} is {t.dtype}"
        agree = float((out.argmax(1) == ref).float().mean())
        assert agree >= 0.75, f"dtype={dtype}: only {agree:.0%} of float32's predictions"


def check_not_fitted(cls: type[Method], params: Mapping[str, Any]) -> None:
    """Use before ``fit`` raises ``NotFittedError`` (a ValueError and an AttributeError)."""
    m, x = _create(cls, params), _queries()
    for what, call in (
        ("logits", lambda: m.logits(x)),
        ("predict", lambda: m.predict(x)),
        ("predict_proba", lambda: m.predict_proba(x)),
        ("save", lambda: m.save(Path(tempfile.gettempdir()) / "fewclip-never-written")),
    ):
        _expect(NotFittedError, "not fitted", call, f"{what} before fit")


def check_bad_input(cls: type[Method], params: Mapping[str, Any]) -> None:
    """Bad queries and a non-task get FewclipErrors that name the input and what was wrong."""
    task = make_task()
    m = _create(cls, params)
    not_a_task: Any = task.support.features
    _expect(InvalidTypeError, "task: expected a fewclip.Task", lambda: m.fit(not_a_task), "fit")
    m.fit(task)
    nan = torch.randn(3, 16)
    nan[1, 2] = float("nan")
    for bad, error, match in (
        (torch.randn(3, 8), InvalidValueError, "x: expected feature dimension 16, found 8"),
        (torch.randn(16), InvalidValueError, "x: expected 2 dimensions"),
        (nan, InvalidValueError, "x: expected finite values, found 1 NaN/inf"),
        (torch.ones(3, 16, dtype=torch.long), InvalidTypeError, "x: expected a floating-point"),
    ):
        _expect(error, match, partial(m.logits, bad), f"logits({tuple(bad.shape)} {bad.dtype})")
    _expect(
        InvalidValueError,
        "y: expected shape",
        lambda: m.score(torch.randn(3, 16), torch.zeros(4, dtype=torch.long)),
        "score with mismatched y",
    )


class _Marker:
    """A value no constructor could produce itself: ``cls(**{k: _Marker(k)})`` must give each
    marker back from ``get_params`` (scikit-learn's rule: ``__init__`` stores, ``fit``
    validates), so a keyword a subclass forgets to pass on to its base is caught."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


def check_params_and_clone(cls: type[Method], params: Mapping[str, Any]) -> None:
    """get_params lists the constructor's keywords and gives back each one as passed;
    set_params round-trips; unknown names are refused; scikit-learn's clone and
    is_classifier work (when scikit-learn is installed)."""
    m = _create(cls, params)
    got = m.get_params()
    sig = inspect.signature(cls.__init__).parameters
    assert set(got) == {k for k in sig if k != "self"}, "get_params must list every keyword"
    assert {"dtype", "device"} <= set(got), "every method takes dtype and device"
    assert m.set_params(**got) is m, "set_params must return self"
    assert m.get_params() == got, "set_params(**get_params()) must change nothing"
    marks = {k: _Marker(k) for k in got}
    kept = cls(**marks).get_params()
    lost = [k for k in marks if kept[k] is not marks[k]]
    assert not lost, f"the constructor must store every keyword as given; it lost {lost}"
    _expect(UnknownParameterError, "unknown parameter", lambda: m.set_params(nope=1), "set_params")
    assert repr(m).startswith(cls.__name__ + "(")
    try:
        from sklearn.base import clone, is_classifier
    except ImportError:  # the feature world does not need scikit-learn
        return
    c = clone(m)
    assert c is not m, "clone must make a new object"
    assert c.get_params() == got, "clone must keep the parameters"
    assert is_classifier(m), "sklearn.base.is_classifier must be true"


def check_deterministic(cls: type[Method], params: Mapping[str, Any]) -> None:
    """Two fits with the same parameters (and seed) give identical logits."""
    task, x = make_task(), _queries()
    a = _create(cls, params).fit(task).logits(x)
    b = _create(cls, params).fit(task).logits(x)
    assert torch.equal(a, b), "two fits with the same seed differ"


def check_one_shot(cls: type[Method], params: Mapping[str, Any]) -> None:
    """One image per class, with no augmented view and with one: fits, or a FewclipError."""
    for views in (0, 1):
        task = make_task(shots=1, views=views, seed=1)
        _fits_or_clear_error(_create(cls, params), task, f"1 shot, {views} views")
    assert _fits_or_clear_error(_create(cls, params), make_task(shots=1, views=2), "1 shot")


def check_two_classes(cls: type[Method], params: Mapping[str, Any]) -> None:
    """Two classes (the smallest classification task) fit."""
    task = make_task(n_classes=2, seed=2)
    assert _fits_or_clear_error(_create(cls, params), task, "2 classes"), "2 classes refused"


def check_many_classes(cls: type[Method], params: Mapping[str, Any]) -> None:
    """A thousand classes at one shot (ImageNet's class count) fit."""
    task = make_task(n_classes=1000, shots=1, dim=32, views=2, seed=3)
    assert _fits_or_clear_error(_create(cls, params), task, "1000 classes"), "1000 classes"


def check_single_image_class(cls: type[Method], params: Mapping[str, Any]) -> None:
    """Uneven classes, one of them with a single image (a user's own folder), fit."""
    task = make_task(n_classes=4, shots=[1, 6, 3, 9], seed=4)
    assert _fits_or_clear_error(_create(cls, params), task, "a single-image class")


def check_validation_trait(cls: type[Method], params: Mapping[str, Any]) -> None:
    """Without a validation set the method fits; with ``uses_validation = False`` it fits
    identically with or without one (the promise the benchmark relies on)."""
    x = _queries()
    without = _create(cls, params).fit(make_task(val=False)).logits(x)
    assert torch.isfinite(without).all()
    if not cls.uses_validation:
        with_val = _create(cls, params).fit(make_task(val=True)).logits(x)
        assert torch.equal(with_val, without), (
            f"{cls.__name__} declares uses_validation = False but its fit changes with task.val"
        )


def check_selection(cls: type[Method], params: Mapping[str, Any]) -> None:
    """A hyper-parameter search picks a candidate with the highest validation accuracy, and
    among equal ones the first in the reference's visiting order (its strict ``>``).

    Every candidate the method reports (``Method._selection``) is fitted on its own, without a
    search, and scored on the validation set; the small validation set (2 images a class)
    makes ties common, so the tie rule is exercised too.
    """
    for seed in (0, 1):
        task = make_task(seed=seed)
        assert task.val is not None
        m = _create(cls, params).fit(task)
        selection = m._selection()
        if "search" not in cls.chooses_on_validation:
            assert selection is None, (
                f"{cls.__name__} reports a search but chooses_on_validation lacks 'search'"
            )
            return
        assert selection is not None, (
            f"seed {seed}: {cls.__name__} declares it searches on validation, but its fit "
            "reported no search (_selection() is None)"
        )
        candidates, chosen = selection
        assert chosen in candidates, f"the chosen {chosen} is not a candidate"
        scores = [
            int(
                (
                    _create(cls, params, **cand).fit(task).predict(task.val.features)
                    == task.val.labels
                ).sum()
            )
            for cand in candidates
        ]
        picked = candidates.index(chosen)
        best = max(scores)
        assert scores[picked] == best, (
            f"seed {seed}: picked {chosen} with {scores[picked]} of {task.val.n} validation "
            f"images right; {candidates[scores.index(best)]} gets {best}"
        )
        assert picked == scores.index(best), (
            f"seed {seed}: {chosen} ties with the earlier {candidates[scores.index(best)]}; "
            "the reference keeps the first best"
        )


def check_epoch_selection(cls: type[Method], params: Mapping[str, Any]) -> None:
    """A method that keeps its best training epoch on validation keeps the one with the
    highest validation accuracy, first or last among equals as its reference does; where the
    fitted method is that epoch's state, its validation accuracy is the recorded one."""
    task = make_task(seed=2)
    assert task.val is not None
    m = _create(cls, params).fit(task)
    selection = m._epoch_selection()
    if "epoch" not in cls.chooses_on_validation:
        assert selection is None, (
            f"{cls.__name__} reports an epoch choice but chooses_on_validation lacks 'epoch'"
        )
        return
    assert selection is not None, (
        f"{cls.__name__} declares it keeps its best epoch on validation, but its fit reported "
        "none (_epoch_selection() is None)"
    )
    history, chosen, ties, final = selection
    assert history, "an epoch was chosen from an empty history"
    scores = [s for _, s in history]
    best = max(scores)
    at = scores.index(best) if ties == "first" else len(scores) - 1 - scores[::-1].index(best)
    assert chosen == history[at][0], (
        f"kept epoch {chosen}; validation accuracy per epoch {history} says {history[at][0]} "
        f"(ties: {ties})"
    )
    if final:
        right = int((m.predict(task.val.features) == task.val.labels).sum())
        assert abs(right / task.val.n - best) < 1e-9, (
            f"the fitted method gets {right} of {task.val.n} validation images right, but "
            f"epoch {chosen} was recorded at {best:.3f}"
        )


def check_new_classes(cls: type[Method], params: Mapping[str, Any]) -> None:
    """``for_classes``: a method that declares it can score new classes
    (``new_class_refusal = None``) scores its training classes again as it does itself, gives
    finite (N, C') scores for three other classes, leaves itself unchanged and saves the copy
    (which, loaded, scores the new classes; with its tower attached where it predicts with
    one); one that cannot raises ``NewClassesError`` with its declared reason."""
    refusal = cls.new_class_refusal
    assert refusal is None or (isinstance(refusal, str) and refusal), (
        "new_class_refusal: expected None or a non-empty reason"
    )
    task, x = make_task(), _queries()
    other = make_task(3, seed=7)
    m = _create(cls, params).fit(task)
    before = m.logits(x)
    if refusal is not None:
        _expect(
            NewClassesError,
            refusal,
            lambda: m.for_classes(other.classnames, other.text_weights, text_tower=task.text_tower),
            "for_classes of a method that declares it cannot",
        )
        return
    same = m.for_classes(task.classnames, task.text_weights, text_tower=task.text_tower)
    assert type(same) is cls
    torch.testing.assert_close(same.logits(x), before, rtol=1e-4, atol=1e-4)
    new = m.for_classes(other.classnames, other.text_weights, text_tower=task.text_tower)
    out = new.logits(x)
    assert out.shape == (len(x), 3), f"for_classes: logits shape {tuple(out.shape)}"
    assert torch.isfinite(out).all(), "for_classes: non-finite logits"
    assert new.classnames_ == other.classnames, "for_classes: classnames_"
    assert new.classes_ == [0, 1, 2], "for_classes: classes_"
    assert torch.equal(m.logits(x), before), "for_classes changed the method it was called on"
    assert m.classnames_ == task.classnames, "for_classes changed the method's classnames_"
    with tempfile.TemporaryDirectory() as tmp:
        new.save(Path(tmp) / "m")
        loaded = base.load(Path(tmp) / "m")
        if cls.predicts_with_text_tower:  # loads without its tower (check_save_load)
            loaded.attach_text_tower(task.text_tower)
        assert torch.equal(loaded.logits(x), out), "saved copy differs"


def check_seed_batching(cls: type[Method], params: Mapping[str, Any]) -> None:
    """``fewclip.methods.fit_seeds`` of copies that differ only in seed, on tasks of one shape,
    leaves each copy as its own ``fit`` does (the same logits within float tolerance, seed by
    seed: a mix-up of seeds or tasks shows); a method with ``batches_seeds`` batches them
    (forced: on a CPU the built-in methods would not)."""
    from fewclip.methods.base import fit_seeds

    seeds, x = (3, 1, 2), _queries()
    tasks = [make_task(seed=10 + s) for s in seeds]
    seeded = "seed" in cls._get_param_names()

    def create(seed: int) -> Method:
        return _create(cls, params, **({"seed": seed} if seeded else {}))

    solo = [create(s).fit(t).logits(x) for s, t in zip(seeds, tasks, strict=True)]
    copies = [create(s) for s in seeds]
    together = fit_seeds(copies, tasks, force=True)
    if cls.batches_seeds:
        assert together == len(seeds), (
            f"{cls.__name__} sets batches_seeds, but fit_seeds(force=True) fitted its quick "
            "copies one by one"
        )
    for s, copy_, ref in zip(seeds, copies, solo, strict=True):
        torch.testing.assert_close(
            copy_.logits(x), ref, rtol=1e-5, atol=1e-4, msg=f"seed {s}: batched != solo"
        )


_CHECKS: tuple[Callable[[type[Method], Mapping[str, Any]], None], ...] = (
    check_traits,
    check_fit_and_predict,
    check_blocked_logits,
    check_extreme_queries,
    check_save_load,
    check_dtypes,
    check_not_fitted,
    check_bad_input,
    check_params_and_clone,
    check_deterministic,
    check_one_shot,
    check_two_classes,
    check_many_classes,
    check_single_image_class,
    check_validation_trait,
    check_selection,
    check_epoch_selection,
    check_new_classes,
    check_seed_batching,
)


def method_checks(
    cls: type[Method], params: Mapping[str, Any] | None = None
) -> list[tuple[str, Callable[[], None]]]:
    """Every check as ``(name, run)``, for test parametrisation; ``params`` override the
    method's ``quick_params``."""
    given = dict(params or {})
    return [(check.__name__, partial(check, cls, given)) for check in _CHECKS]


def check_method(cls: type[Method], params: Mapping[str, Any] | None = None) -> None:
    """Run every conformance check on the method class ``cls``; the first failure (a failed
    assertion or any unexpected error) raises an ``AssertionError`` that names the check."""
    for name, run in method_checks(cls, params):
        try:
            run()
        except Exception as e:  # an unexpected error fails the check too, named
            detail = str(e) if isinstance(e, AssertionError) else f"{type(e).__name__}: {e}"
            raise AssertionError(f"{name}({cls.__name__}): {detail}") from e
