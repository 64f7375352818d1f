"""The shared training machinery (methods/_training.py) against Dassl's behaviour, re-derived:
the learning rate from torch's own CosineAnnealingLR stepped as Dassl's warm-up wrapper steps
it, and the batches from Dassl's loader rule drop_last = (n >= batch_size)."""

from __future__ import annotations

import pytest
import torch

from fewclip import methods
from fewclip.methods._training import dassl_epoch, dassl_lr, pooled_epoch
from fewclip.task import FeatureSet, Task


def _dassl_schedule(lr: float, epochs: int, warmup_epochs: int, warmup_lr: float) -> list[float]:
    """The rate of each epoch as Dassl produces it: a constant warm-up, after which the cosine
    scheduler (torch's, T_max = epochs) is stepped once per epoch from its own epoch 0
    (WARMUP_RECOUNT=True)."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=lr)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=float(epochs))
    out = []
    for epoch in range(epochs):
        if epoch < warmup_epochs:
            out.append(warmup_lr)
            continue
        if epoch > warmup_epochs:
            opt.step()  # (no gradient: only the scheduler's count matters)
            cosine.step()
        out.append(cosine.get_last_lr()[0])
    return out


@pytest.mark.parametrize(("epochs", "warmup"), [(200, 1), (20, 1), (10, 3), (5, 0)])
def test_dassl_lr_restarts_the_cosine_after_the_warmup(epochs: int, warmup: int) -> None:
    ref = _dassl_schedule(2e-3, epochs, warmup, 1e-5)
    got = [
        dassl_lr(e, lr=2e-3, epochs=epochs, warmup_epochs=warmup, warmup_lr=1e-5)
        for e in range(epochs)
    ]
    assert got == pytest.approx(ref, rel=1e-12, abs=1e-15)
    if warmup:
        assert got[warmup] == pytest.approx(2e-3)  # the first epoch after the warm-up: full rate
    assert got[-1] > 0  # the last epoch is not the cosine's end


@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("clip-adapter", {}),
        ("taskres", {}),
        ("zs-lp", {}),
        ("clap", {}),
    ],
)
def test_methods_use_the_dassl_schedule(name: str, extra: dict) -> None:
    m = methods.create(name, epochs=12, **extra)
    for e in range(12):
        assert m._lr_at(e) == dassl_lr(
            e, lr=m.lr, epochs=12, warmup_epochs=m.warmup_epochs, warmup_lr=m.warmup_lr
        )


@pytest.mark.parametrize(
    ("n", "batch", "sizes"),
    [(50, 32, [32]), (64, 32, [32, 32]), (20, 32, [20]), (32, 32, [32]), (95, 32, [32, 32])],
)
def test_dassl_epoch_drops_the_last_partial_batch(n: int, batch: int, sizes: list[int]) -> None:
    ep = dassl_epoch(n, 3, batch, torch.Generator().manual_seed(0))
    assert [b.stop - b.start for b in ep.batches] == sizes
    assert sorted(ep.order.tolist()) == list(range(n)) and ep.view_of.shape == (n,)
    assert int(ep.view_of.max()) < 3


def _task(n_per_class: int = 10, classes: int = 5, views: int = 2) -> Task:
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    feats = (
        torch.randn(len(labels), 16, generator=g) + torch.randn(classes, 16, generator=g)[labels]
    )
    bank = feats + 0.1 * torch.randn(views, len(labels), 16, generator=g)
    text = torch.nn.functional.normalize(torch.randn(classes, 16, generator=g), dim=1)
    return Task([f"c{i}" for i in range(classes)], text, FeatureSet(feats, labels, bank))


@pytest.mark.parametrize(
    ("name", "sampler"),
    [
        ("clip-adapter", "dassl_epoch"),
        ("taskres", "dassl_epoch"),
        ("zs-lp", "pooled_epoch"),
        ("clap", "pooled_epoch"),
    ],
)
def test_a_50_image_support_at_batch_32_trains_one_step_per_epoch(
    name: str, sampler: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dassl: 1 step per epoch (the 18 left over are dropped); fewclip used to take 2."""
    import importlib

    seen: list[list[int]] = []
    module = importlib.import_module(type(methods.create(name)).__module__)
    real = getattr(module, sampler)

    def spy(n: int, n_views: int, batch_size: int, generator: torch.Generator):  # type: ignore[no-untyped-def]
        ep = real(n, n_views, batch_size, generator)
        seen.append([b.stop - b.start for b in ep.batches])
        return ep

    monkeypatch.setattr(module, sampler, spy)
    methods.create(name, epochs=3, batch_size=32).fit(_task())
    assert seen == [[32]] * 3


@pytest.mark.parametrize(
    ("n", "views", "batch", "sizes"),
    [(20, 20, 256, [256]), (5, 2, 256, [10]), (300, 2, 256, [256]), (600, 3, 256, [256, 256])],
)
def test_pooled_epoch_draws_released_clap_batches(
    n: int, views: int, batch: int, sizes: list[int]
) -> None:
    """ZS-LP/CLAP's released epoch: Dassl's batch count over the images, rows without
    replacement from all (view, image) pairs, so a small support still fills a batch."""
    ep = pooled_epoch(n, views, batch, torch.Generator().manual_seed(0))
    assert [b.stop - b.start for b in ep.batches] == sizes
    rows = ep.rows.tolist()
    assert len(set(rows)) == len(rows) and max(rows) < n * views
    if n * views > batch > n:
        assert len({r % n for r in rows}) < len(rows)  # some image comes in several views


@pytest.mark.parametrize("name", ["clip-adapter", "taskres", "zs-lp", "tip-adapter-f", "ape-t"])
def test_declarative_epoch_and_batch_checks(name: str) -> None:
    import numpy as np

    from fewclip.errors import InvalidValueError

    task = _task()
    for bad, msg in [
        ({"epochs": -1}, "epochs: expected a non-negative integer, found -1"),
        ({"epochs": 2.5}, "epochs: expected a non-negative integer, found 2.5"),
        ({"batch_size": 0}, "batch_size: expected a positive integer, found 0"),
    ]:
        with pytest.raises(InvalidValueError, match=msg):
            methods.create(name, **bad).fit(task)
    methods.create(name, epochs=np.int64(1), batch_size=8).fit(task)  # numpy integers are fine
