"""Seeds fitted as one batched model (``fewclip.methods.fit_seeds``): each seed of a batch ends
as its solo fit (fitted tensors, chosen values, validation history, logits), whatever the
shots, dtype and seed order; what cannot be batched is fitted alone, with the same results.
On a CPU the built-in methods batch only when forced (``force=True``: slower there)."""

import pytest
import torch
from tests.methods._helpers import make_shuffled_task

from fewclip import methods
from fewclip.errors import InvalidTypeError, InvalidValueError

#: Short schedules with several batches a epoch, the last one shorter (5 classes × 7 shots =
#: 35 images in batches of 8).
PARAMS = {
    "clip-adapter": {"epochs": 4, "batch_size": 8, "reduction": 2},
    "tip-adapter-f": {"epochs": 6, "batch_size": 8, "search_step": (8, 4)},
}
TOL = {
    torch.float16: {"rtol": 1e-3, "atol": 1e-3},
    torch.float32: {"rtol": 1e-6, "atol": 1e-6},
    torch.float64: {"rtol": 1e-12, "atol": 1e-12},
}


def _queries(dtype=torch.float32):
    return 3 * torch.randn(11, 16, generator=torch.Generator().manual_seed(7), dtype=dtype)


def _tasks(seeds, shots=7, dtype=torch.float32, val=True):
    """One task per seed, each a different draw (as the grid's seeds are)."""
    return [
        make_shuffled_task(c=5, shots=shots, d=16, seed=100 + s, dtype=dtype, val=val)
        for s in seeds
    ]


def _create(name, seed, dtype="float32", **extra):
    return methods.create(name, seed=seed, dtype=dtype, **{**PARAMS[name], **extra})


def _fitted(model):
    """Every fitted tensor and value that ``fit`` leaves, by name."""
    if isinstance(model, methods.CLIPAdapter):
        out = {f"modules.{k}": v for k, v in model.modules_.state_dict().items()}
        out.update(text_weights_=model.text_weights_, ratio_=model.ratio_)
        return out
    return {
        "keys_": model.keys_,
        "key_labels_": model.key_labels_,
        "text_weights_": model.text_weights_,
        "alpha_": model.alpha_,
        "beta_": model.beta_,
        "val_accuracy_": model.val_accuracy_,
        "best_epoch_": model.best_epoch_,
        "history": model._val_history,
    }


def _assert_same(batched, solo, dtype, what):
    a, b = _fitted(batched), _fitted(solo)
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert a[key].dtype == b[key].dtype, (what, key)
            torch.testing.assert_close(a[key], b[key], **TOL[dtype], msg=f"{what}: {key}")
        else:  # chosen values, epochs, validation histories: the same choices
            assert a[key] == b[key], (what, key, a[key], b[key])
    x = _queries(dtype)
    torch.testing.assert_close(batched.logits(x), solo.logits(x), **TOL[dtype], msg=what)
    assert batched.classnames_ == solo.classnames_
    assert batched.n_features_in_ == solo.n_features_in_


@pytest.mark.parametrize("name", sorted(PARAMS))
@pytest.mark.parametrize(
    ("shots", "dtype"),
    [(1, torch.float32), (3, torch.float32), (7, torch.float32), (7, torch.float64)],
)
def test_each_seed_of_a_batch_equals_its_solo_fit(one_thread, name, shots, dtype):
    seeds = (1, 2, 3)
    tasks = _tasks(seeds, shots, dtype)
    dname = str(dtype).removeprefix("torch.")
    solo = [_create(name, s, dname).fit(t) for s, t in zip(seeds, tasks, strict=True)]
    batch = [_create(name, s, dname) for s in seeds]
    assert methods.seeds_batchable(batch, tasks, force=True)
    assert methods.fit_seeds(batch, tasks, force=True) == 3
    for s, b, ref in zip(seeds, batch, solo, strict=True):
        _assert_same(b, ref, dtype, f"{name} seed {s}, {shots} shots, {dtype}")
    # the check can fail: the seeds' fits differ from one another
    x = _queries(dtype)
    assert not torch.allclose(solo[0].logits(x), solo[1].logits(x))


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_float16_seeds_batch_as_they_fit_alone(one_thread, name):
    seeds = (4, 5)
    tasks = _tasks(seeds)
    solo = [_create(name, s, "float16").fit(t) for s, t in zip(seeds, tasks, strict=True)]
    batch = [_create(name, s, "float16") for s in seeds]
    assert methods.fit_seeds(batch, tasks, force=True) == 2
    for b, ref in zip(batch, solo, strict=True):
        _assert_same(b, ref, torch.float16, f"{name} float16")


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_seeds_keep_their_own_streams_and_tasks(one_thread, name):
    """One task and three seeds: each seed's own initialisation and data order; one seed and
    three tasks: each task its own; seeds given in any order: each its own. A batch that mixed
    up streams, tasks or order would match another seed's solo fit."""
    x = _queries()
    task = _tasks((9,))[0]
    seeds = (3, 1, 2)
    solo = {s: _create(name, s).fit(task) for s in seeds}
    logits = [solo[s].logits(x) for s in seeds]
    assert not torch.allclose(logits[0], logits[1])
    assert not torch.allclose(logits[1], logits[2])
    batch = [_create(name, s) for s in seeds]
    assert methods.fit_seeds(batch, [task] * 3, force=True) == 3
    for s, b in zip(seeds, batch, strict=True):
        _assert_same(b, solo[s], torch.float32, f"{name} seed {s} on one task")

    tasks = _tasks((1, 2, 3))
    solo_tasks = [_create(name, 5).fit(t) for t in tasks]
    batch = [_create(name, 5) for _ in tasks]
    assert methods.fit_seeds(batch, tasks, force=True) == 3
    for i, (b, ref) in enumerate(zip(batch, solo_tasks, strict=True)):
        _assert_same(b, ref, torch.float32, f"{name} task {i}, one seed")


def test_tip_adapter_f_seeds_choose_their_own_epochs(one_thread):
    """Each seed is scored on its own validation set after every epoch and keeps its own best
    epoch; the histories differ between seeds, so a shared or swapped one would show."""
    seeds = (1, 2, 3)
    tasks = _tasks(seeds, shots=4)
    params = {"epochs": 12, "lr": 0.02}
    solo = [_create("tip-adapter-f", s, **params).fit(t) for s, t in zip(seeds, tasks, strict=True)]
    batch = [_create("tip-adapter-f", s, **params) for s in seeds]
    assert methods.fit_seeds(batch, tasks, force=True) == 3
    histories = [m._val_history for m in solo]
    assert len(histories[0]) == 12
    assert histories[0] != histories[1] != histories[2]
    for b, ref in zip(batch, solo, strict=True):
        assert b._epoch_selection() == ref._epoch_selection()
        _assert_same(b, ref, torch.float32, "tip-adapter-f epochs")


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_without_validation_and_untrained(one_thread, name):
    seeds = (1, 2)
    for val, epochs in ((False, None), (True, 0)):
        tasks = _tasks(seeds, val=val)
        extra = {} if epochs is None else {"epochs": epochs}
        solo = [_create(name, s, **extra).fit(t) for s, t in zip(seeds, tasks, strict=True)]
        batch = [_create(name, s, **extra) for s in seeds]
        assert methods.fit_seeds(batch, tasks, force=True) == 2
        for b, ref in zip(batch, solo, strict=True):
            _assert_same(b, ref, torch.float32, f"{name} val={val} epochs={epochs}")


@pytest.mark.parametrize(
    ("name", "params", "shots", "why"),
    [
        ("clip-adapter", [{"branch": "both"}] * 2, [7, 7], "autograd branch"),
        ("clip-adapter", [{"learn_ratio": True}] * 2, [7, 7], "learned ratio"),
        ("clip-adapter", [{"epochs": 2}, {"epochs": 3}], [7, 7], "other parameters"),
        ("clip-adapter", [{}, {}], [7, 6], "other support sizes"),
        ("tip-adapter-f", [{"prototypes": 2}] * 2, [7, 7], "prototype cache"),
        ("tip-adapter-f", [{}, {}], [7, 6], "other support sizes"),
    ],
)
def test_what_cannot_batch_fits_alone(one_thread, name, params, shots, why):
    tasks = [_tasks((s,), k)[0] for s, k in zip((1, 2), shots, strict=True)]
    solo = [_create(name, s, **p).fit(t) for s, p, t in zip((1, 2), params, tasks, strict=True)]
    batch = [_create(name, s, **p) for s, p in zip((1, 2), params, strict=True)]
    assert not methods.seeds_batchable(batch, tasks, force=True), why
    assert methods.fit_seeds(batch, tasks, force=True) == 1, why
    x = _queries()
    for b, ref in zip(batch, solo, strict=True):
        assert torch.equal(b.logits(x), ref.logits(x)), why


def test_batching_needs_the_same_validation_shape_and_a_batching_method(one_thread):
    with_val, without = _tasks((1,))[0], _tasks((2,), val=False)[0]
    pair = [_create("tip-adapter-f", 1), _create("tip-adapter-f", 2)]
    assert not methods.seeds_batchable(pair, [with_val, without], force=True)
    lp = [methods.create("linear-probe", Cs=(1.0,)) for _ in range(2)]
    assert not methods.seeds_batchable(lp, _tasks((1, 2)), force=True)
    assert methods.fit_seeds(lp, _tasks((1, 2)), force=True) == 1
    assert lp[0].coef_.shape == (5, 16)
    one = [_create("clip-adapter", 1)]
    assert not methods.seeds_batchable(one, _tasks((1,)), force=True)
    mixed = [_create("clip-adapter", 1), _create("tip-adapter-f", 2)]
    assert not methods.seeds_batchable(mixed, _tasks((1, 2)), force=True)
    assert methods.get("clip-adapter").batches_seeds
    assert methods.get("tip-adapter-f").batches_seeds
    assert not methods.get("tip-adapter").batches_seeds


def test_fit_seeds_checks_its_inputs():
    with pytest.raises(InvalidValueError, match="one task per model"):
        methods.fit_seeds([_create("clip-adapter", 1)], _tasks((1, 2)))
    with pytest.raises(InvalidTypeError) as e:
        methods.fit_seeds(["clip-adapter"], _tasks((1,)))  # type: ignore[list-item]
    assert str(e.value) == "models: expected fewclip methods, found str"


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("clip-adapter", {"ratio": 1.5}),
        ("tip-adapter-f", {"batch_size": 0}),
        ("tip-adapter-f", {"epochs": -1}),
        ("tip-adapter-f", {"lr": -0.1}),
    ],
)
def test_a_bad_hyper_parameter_fails_the_batch_as_it_fails_one_fit(name, bad):
    with pytest.raises(InvalidValueError) as alone:
        _create(name, 1, **bad).fit(_tasks((1,))[0])
    batch = [_create(name, s, **bad) for s in (1, 2)]
    with pytest.raises(InvalidValueError) as together:
        methods.fit_seeds(batch, _tasks((1, 2)), force=True)
    assert str(together.value) == str(alone.value)


@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("clip-adapter", {"epochs": 1}),
        ("tip-adapter-f", {"epochs": 1}),
        ("tip-adapter-f", {"weight_decay": 20.0}),
    ],
)
def test_one_epoch_and_other_settings_batch_as_they_fit_alone(one_thread, name, extra):
    seeds = (1, 2)
    tasks = _tasks(seeds)
    solo = [_create(name, s, **extra).fit(t) for s, t in zip(seeds, tasks, strict=True)]
    batch = [_create(name, s, **extra) for s in seeds]
    assert methods.fit_seeds(batch, tasks, force=True) == 2
    for b, ref in zip(batch, solo, strict=True):
        _assert_same(b, ref, torch.float32, f"{name} {extra}")
    # the setting matters well above the tolerance: the default gives other scores
    other = _create(name, 1).fit(tasks[0])
    assert (other.logits(_queries()) - solo[0].logits(_queries())).abs().max() > 1e-4


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_on_a_cpu_seeds_batch_only_when_forced(one_thread, name, monkeypatch):
    """Batching is slower on a CPU (docs/performance.md): without ``force`` the copies fit one
    by one there; a method that says batching pays on the device batches them unforced."""
    seeds = (1, 2)
    tasks = _tasks(seeds)
    solo = [_create(name, s).fit(t) for s, t in zip(seeds, tasks, strict=True)]
    cls = methods.get(name)
    assert not cls._seeds_pay("cpu")
    assert cls._seeds_pay("cuda")
    batch = [_create(name, s) for s in seeds]
    assert not methods.seeds_batchable(batch, tasks)
    assert methods.fit_seeds(batch, tasks) == 1
    monkeypatch.setattr(cls, "_seeds_pay", classmethod(lambda c, kind: True))
    paid = [_create(name, s) for s in seeds]
    assert methods.fit_seeds(paid, tasks) == 2
    for a, b, ref in zip(batch, paid, solo, strict=True):
        _assert_same(a, ref, torch.float32, f"{name} alone")
        _assert_same(b, ref, torch.float32, f"{name} batched, unforced")


def test_tip_adapter_f_batches_only_caches_with_the_same_class_counts(one_thread):
    """Tip-Adapter-F's batched cache sums each class's keys with one reshape for every seed,
    so the seeds' supports must hold the same number of images of each class: 35 images as
    7 a class, or as 8, 6, 7, 7, 7, are not batched, wherever the odd one is in the list."""
    even = _tasks((1, 2, 3))
    odd = make_shuffled_task(c=5, d=16, seed=104, per=[8, 6, 7, 7, 7])
    assert odd.support.n == even[0].support.n
    models = [_create("tip-adapter-f", s) for s in (1, 2, 3)]
    assert methods.seeds_batchable(models, even, force=True)
    for tasks in ([odd, *even[1:]], [even[0], odd], [*even[:2], odd]):
        assert not methods.seeds_batchable(models[: len(tasks)], tasks, force=True)
