"""Few-shot draws that reproduce the reference implementations image for image.

Two layers:

- ``sample_few_shot`` / ``sample_coop`` are the references' samplers, bit for bit (Dassl's
  ``DatasetBase.generate_fewshot_dataset`` as used by CoOp and Tip-Adapter). They follow the
  reference even where it is lenient: a class with fewer than ``shots`` images silently yields
  all of its images (or, with ``repeat``, ``random.choices`` with replacement).
- ``draw_support`` / ``draw_fewshot_val`` / ``draw_coop`` are what fewclip uses. They call the
  same samplers (so the chosen images are identical) but check the class counts first: by default
  a class with fewer than ``shots`` images raises ``NotEnoughImagesError`` naming the class and the
  counts, unless ``repeat=True`` (sample with replacement, Tip-Adapter's behaviour) or
  ``allow_fewer=True`` (take every image of that class, CoOp's behaviour). A class with no image
  at all is always an error.

All samplers use a private ``random.Random(seed)``: the same stream as ``random.seed(seed)`` in
the references, without touching Python's global random state.
"""

from __future__ import annotations

import random
import re
from collections.abc import Hashable, Sequence
from typing import Any

from fewclip.errors import FewclipError, InvalidTypeError, InvalidValueError, count_of

__all__ = [
    "ALL",
    "VAL_EVERY",
    "NotEnoughImagesError",
    "all_val_count",
    "check_shots",
    "draw_all",
    "draw_coop",
    "draw_fewshot_val",
    "draw_support",
    "group_by_label",
    "sample_coop",
    "sample_few_shot",
    "sample_fewshot_val",
]


#: ``shots`` value meaning "every training image of each class" (``-k all``; uneven classes).
ALL = "all"

#: With ``shots=ALL`` under ``fewshot-val``, one validation image is held out per this many
#: training images of a class (at most ``val_shots``; see :func:`all_val_count`).
VAL_EVERY = 5

#: The command-line ways out of a class that is too small, appended to the messages.
_CLI_WAYS_OUT = (
    "-k all (every image of each class; uneven classes are fine), "
    "--repeat (sample with replacement, Tip-Adapter's choice; Python: repeat=True), "
    "--allow-fewer (take all images of the short classes, CoOp's choice; Python: "
    "allow_fewer=True), --protocol val-free (no validation images held out), or a smaller -k"
)


def _more(n: int, shown: int = 5) -> str:
    """The tail of a list of ``n`` problems of which ``shown`` are named: ``" (and 2 more)"``."""
    return f" (and {n - shown} more)" if n > shown else ""


class NotEnoughImagesError(FewclipError, ValueError):
    """A class has fewer images than a draw asks for."""


def all_val_count(n: int, val_shots: int = 4) -> int:
    """Validation images held out of a class of ``n`` training images by ``shots=ALL`` under
    ``fewshot-val``: ``min(val_shots, n // VAL_EVERY)`` (one per five images, at most
    ``val_shots``; 0 for a class of fewer than five)."""
    return min(val_shots, n // VAL_EVERY)


def draw_all(
    labels: Any,
    *,
    seed: int,
    val_shots: int | None = None,
    classnames: Sequence[str] | None = None,
    where: str = "train",
) -> tuple[list[int], list[int]]:
    """Every image of each class as support (``shots=ALL``), minus a seeded validation hold-out.

    With ``val_shots=None`` the support is every index, in order, and the validation list is
    empty. Otherwise, per label in order of first appearance, ``random.Random(seed)`` samples
    :func:`all_val_count` validation items; the support is every other index, in input order.
    A class too small to give one validation image raises ``NotEnoughImagesError``.
    """
    rng = random.Random(_check_seed(seed))
    groups = group_by_label(labels)
    check_shots(labels, 1, classnames=classnames, where=where)
    if val_shots is None:
        return sorted(i for items in groups.values() for i in items), []
    _check_count(val_shots, "val_shots")
    short = [
        f"{_name(y, classnames)} has {len(items)}"
        for y, items in groups.items()
        if all_val_count(len(items), val_shots) == 0
    ]
    if short:
        raise NotEnoughImagesError(
            f"{where}: -k all with a few-shot validation set holds out one image per "
            f"{VAL_EVERY} of a class, so each class needs at least {VAL_EVERY} images; "
            + "; ".join(short[:5])
            + _more(len(short))
            + ". Use --protocol val-free (fixed hyper-parameters, nothing held out), or add "
            "images."
        )
    val: list[int] = []
    for items in groups.values():
        val.extend(rng.sample(items, all_val_count(len(items), val_shots)))
    held = set(val)
    support = sorted(i for items in groups.values() for i in items if i not in held)
    return support, val


def _as_list(labels: Any) -> list[Hashable]:
    if hasattr(labels, "tolist"):  # torch.Tensor, numpy.ndarray
        return list(labels.tolist())
    return list(labels)


def group_by_label(labels: Any) -> dict[Hashable, list[int]]:
    """Indices grouped by label, labels in order of first appearance, indices ascending."""
    groups: dict[Hashable, list[int]] = {}
    for i, y in enumerate(_as_list(labels)):
        groups.setdefault(y, []).append(i)
    return groups


def _check_count(shots: int, name: str = "shots") -> int:
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise InvalidValueError(f"{name}: expected a positive integer, found {shots!r}")
    return shots


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidTypeError(f"seed: expected an int, found {seed!r}")
    return seed


def _draw(
    rng: random.Random, groups: dict[Hashable, list[int]], shots: int, repeat: bool
) -> list[int]:
    out: list[int] = []
    for items in groups.values():
        if len(items) >= shots:
            out.extend(rng.sample(items, shots))
        elif repeat:
            out.extend(rng.choices(items, k=shots))
        else:
            out.extend(items)
    return out


def sample_few_shot(labels: Any, shots: int, *, seed: int, repeat: bool = False) -> list[int]:
    """The reference few-shot draw (Dassl ``generate_fewshot_dataset``; Tip-Adapter: seed 1).

    Seeds a ``random.Random(seed)``; groups the indices by label in order of first appearance; for
    each label takes ``random.sample(items, shots)``, or ``random.choices(items, k=shots)`` when
    the label has fewer than ``shots`` items and ``repeat`` is set, else all its items. Returns the
    chosen indices in that order.

    Args:
        labels: one label per item (ints, strings, a tensor or an array).
        shots: images per class (K ≥ 1).
        seed: the seed of the random stream.
        repeat: sample with replacement for classes with fewer than ``shots`` items.
    """
    _check_count(shots)
    rng = random.Random(_check_seed(seed))
    return _draw(rng, group_by_label(labels), shots, repeat)


def sample_coop(
    train_labels: Any, val_labels: Any, shots: int, *, seed: int
) -> tuple[list[int], list[int]]:
    """CoOp's draw (seeds 1, 2, 3): ``shots`` per class from train, then min(shots, 4) per class
    from the validation split, both from the same random stream (``repeat=False``).

    The training indices equal ``sample_few_shot(train_labels, shots, seed=seed)``.
    """
    _check_count(shots)
    rng = random.Random(_check_seed(seed))
    train = _draw(rng, group_by_label(train_labels), shots, False)
    val = _draw(rng, group_by_label(val_labels), min(shots, 4), False)
    return train, val


def sample_fewshot_val(
    labels: Any, shots: int, *, seed: int, val_shots: int = 4, repeat: bool = False
) -> tuple[list[int], list[int]]:
    """fewclip's ``fewshot-val`` draw: support and a disjoint validation set from one split.

    The support indices equal ``sample_few_shot(labels, shots, seed=seed, repeat=repeat)``. The
    same random stream then takes, per label in order of first appearance, ``min(shots,
    val_shots)`` of the items not in the support set (``random.sample``), or all remaining items
    when fewer are left.
    """
    _check_count(shots)
    _check_count(val_shots, "val_shots")
    rng = random.Random(_check_seed(seed))
    groups = group_by_label(labels)
    support = _draw(rng, groups, shots, repeat)
    chosen = set(support)
    k = min(shots, val_shots)
    val: list[int] = []
    for items in groups.values():
        rest = [i for i in items if i not in chosen]
        val.extend(rng.sample(rest, k) if len(rest) >= k else rest)
    return support, val


def _name(label: Hashable, classnames: Sequence[str] | None) -> str:
    if classnames is not None and isinstance(label, int) and 0 <= label < len(classnames):
        return f"class {label} ({classnames[label]!r})"
    return f"class {label!r}"


def check_shots(
    labels: Any,
    shots: int,
    *,
    classnames: Sequence[str] | None = None,
    where: str = "train",
    repeat: bool = False,
    allow_fewer: bool = False,
    reserve: int = 0,
    val_shots: int = 4,
    repeat_allowed: bool = True,
) -> None:
    """Raise ``NotEnoughImagesError`` if a class cannot give ``shots`` (+ ``reserve``) images.

    ``val_shots`` is the validation rule behind ``reserve`` (min(K, val_shots) per class), used
    for the largest K the message suggests; ``repeat_allowed=False`` leaves ``--repeat`` out of
    the ways out (CoOp's draw has none).

    With ``classnames``, every class id ``0..C-1`` must occur (an empty class is always an
    error). A class with fewer than ``shots + reserve`` images is an error unless ``repeat``
    (only without ``reserve``) or ``allow_fewer`` is set. The message names the class, what was
    asked and what was found, and the way out.
    """
    groups = group_by_label(labels)
    problems: list[str] = []
    if classnames is not None:
        for c in range(len(classnames)):
            if c not in groups:
                problems.append(f"{_name(c, classnames)} has no images in {where}")
        if problems:
            raise NotEnoughImagesError(
                f"{where}: {len(problems)} of {len(classnames)} classes are empty: "
                + "; ".join(problems[:5])
                + _more(len(problems))
            )
    if allow_fewer:
        return
    short = []
    for y, items in groups.items():
        n = len(items)
        # repeat relaxes the support part only: validation images must be distinct and unused.
        ok = n >= shots + reserve if reserve else (n >= shots or repeat)
        if not ok:
            short.append(f"{_name(y, classnames)} has {count_of(n, 'image')}")
    if short:
        what = count_of(shots, "shot") + (
            f" + {count_of(reserve, 'validation image')}" if reserve else ""
        )
        smallest = min(len(items) for items in groups.values())
        fits = _largest_fitting_shots(smallest, reserve, val_shots)
        largest = f" The largest -k every class can give is {fits}." if fits else ""
        ways = (
            _CLI_WAYS_OUT
            if not reserve
            else _CLI_WAYS_OUT.replace(
                "--repeat (sample", "--repeat with --protocol val-free (sample"
            )
        )
        if not repeat_allowed:
            ways = re.sub(r"--repeat .*?\), ", "", ways)
        raise NotEnoughImagesError(
            f"{where}: {len(short)} of {len(groups)} classes have fewer images than {what}: "
            + "; ".join(short[:5])
            + _more(len(short))
            + f".{largest} Ways out: {ways}."
        )


def _largest_fitting_shots(n: int, reserve: int, val_shots: int) -> int:
    """The largest K with K + min(K, val_shots) ≤ n when validation images are held out
    (``reserve`` > 0), or K ≤ n without a reserve."""
    if not reserve:
        return n
    return max((k for k in range(1, n + 1) if k + min(k, val_shots) <= n), default=0)


def draw_support(
    labels: Any,
    shots: int,
    *,
    seed: int,
    classnames: Sequence[str] | None = None,
    repeat: bool = False,
    allow_fewer: bool = False,
    where: str = "train",
) -> list[int]:
    """``sample_few_shot`` after ``check_shots`` (strict by default, see the module docstring)."""
    _check_count(shots)
    check_shots(
        labels, shots, classnames=classnames, where=where, repeat=repeat, allow_fewer=allow_fewer
    )
    return sample_few_shot(labels, shots, seed=seed, repeat=repeat)


def draw_coop(
    train_labels: Any,
    val_labels: Any,
    shots: int,
    *,
    seed: int,
    classnames: Sequence[str] | None = None,
    allow_fewer: bool = False,
) -> tuple[list[int], list[int]]:
    """``sample_coop`` after checking both splits (train: ``shots``, val: min(shots, 4))."""
    _check_count(shots)
    check_shots(
        train_labels,
        shots,
        classnames=classnames,
        where="train",
        allow_fewer=allow_fewer,
        repeat_allowed=False,
    )
    check_shots(
        val_labels,
        min(shots, 4),
        classnames=classnames,
        where="val",
        allow_fewer=allow_fewer,
        repeat_allowed=False,
    )
    return sample_coop(train_labels, val_labels, shots, seed=seed)


def draw_fewshot_val(
    labels: Any,
    shots: int,
    *,
    seed: int,
    val_shots: int = 4,
    classnames: Sequence[str] | None = None,
    repeat: bool = False,
    allow_fewer: bool = False,
    where: str = "train",
) -> tuple[list[int], list[int]]:
    """``sample_fewshot_val`` after checking that each class has ``shots + min(shots, val_shots)``
    images (``repeat`` does not relax this: validation images must be distinct from the support).
    """
    _check_count(shots)
    _check_count(val_shots, "val_shots")
    k = min(shots, val_shots)
    check_shots(
        labels,
        shots,
        classnames=classnames,
        where=where,
        allow_fewer=allow_fewer,
        reserve=k,
        val_shots=val_shots,
    )
    return sample_fewshot_val(labels, shots, seed=seed, val_shots=val_shots, repeat=repeat)
