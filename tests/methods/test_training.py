"""The shared training machinery (methods/_training.py) against Dassl's behaviour, re-derived:
the learning rate from torch's own CosineAnnealingLR stepped as Dassl's warm-up wrapper steps
it, and the batches from Dassl's loader rule drop_last = (n >= batch_size)."""

from __future__ import annotations

import math

import pytest
import torch

from fewclip import methods
from fewclip.methods._training import (
    EndlessShuffle,
    FusedAdam,
    FusedSGD,
    KeepBest,
    dassl_epoch,
    dassl_lr,
    endless_shuffles,
    pooled_epoch,
    shuffled_epoch,
    warmup_cosine_lr,
)
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
    assert sorted(ep.order.tolist()) == list(range(n))
    assert ep.view_of.shape == (n,)
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
    assert len(set(rows)) == len(rows)
    assert max(rows) < n * views
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


@pytest.mark.parametrize(("n", "batch"), [(50, 32), (64, 32), (10, 32), (256, 256), (257, 256)])
def test_shuffled_epoch_keeps_the_last_batch_as_a_plain_data_loader(n: int, batch: int) -> None:
    """Tip-Adapter-F and APE-T train with torch's DataLoader(shuffle=True) (drop_last=False)."""
    loader = torch.utils.data.DataLoader(range(n), batch_size=batch, drop_last=False)
    ep = shuffled_epoch(n, 3, batch, torch.Generator().manual_seed(0))
    assert [b.stop - b.start for b in ep.batches] == [len(b) for b in loader]
    assert sorted(ep.order.tolist()) == list(range(n))
    dassl = dassl_epoch(n, 3, batch, torch.Generator().manual_seed(0))
    assert torch.equal(dassl.order, ep.order)
    assert torch.equal(dassl.view_of, ep.view_of)


def test_epoch_rows_are_each_images_drawn_view() -> None:
    bank = torch.arange(3 * 7 * 2, dtype=torch.float32).reshape(3, 7, 2)
    ep = shuffled_epoch(7, 3, 4, torch.Generator().manual_seed(1))
    for batch in ep.batches:
        idx, rows = ep.rows(bank, batch)
        for i, row in zip(idx.tolist(), rows, strict=True):
            assert torch.equal(row, bank[ep.view_of[i], i])


@pytest.mark.parametrize("contiguous", [True, False])
def test_epoch_gather_is_every_batch_in_training_order(contiguous: bool) -> None:
    """``Epoch.gather`` (a row copy on the flattened bank) holds, position by position, what
    ``rows`` gives batch by batch; a non-contiguous bank takes the indexing path."""
    bank = torch.randn(3, 7, 5)
    if not contiguous:
        bank = torch.randn(7, 3, 5).transpose(0, 1)
    ep = shuffled_epoch(7, 3, 4, torch.Generator().manual_seed(1))
    gathered = ep.gather(bank)
    for batch in ep.batches:
        assert torch.equal(gathered[batch], ep.rows(bank, batch)[1])
    assert torch.equal(gathered, bank[ep.view_of[ep.order], ep.order])


def test_warmup_cosine_lr_is_linear_then_cosine() -> None:
    lr, w, total = 1e-3, 50, 400
    got = [
        warmup_cosine_lr(s, lr=lr, warmup_steps=w, warmup_lr=1e-5, total=total) for s in range(451)
    ]
    assert got[0] == 1e-5
    assert got[25] == pytest.approx(lr / 2)
    assert got[49] == pytest.approx(lr * 49 / 50)
    assert got[w] == pytest.approx(lr)  # the cosine starts at the full rate
    assert got[w + total // 2] == pytest.approx(lr / 2)
    assert got[w + total] == pytest.approx(0.0, abs=1e-18)


def test_endless_shuffle_serves_whole_passes_across_batches() -> None:
    stream = EndlessShuffle(5, torch.Generator().manual_seed(0))
    served = torch.cat([stream.take(k) for k in (3, 4, 3)]).tolist()  # 10 = two passes
    assert sorted(served[:5]) == list(range(5))
    assert sorted(served[5:]) == list(range(5))


@pytest.mark.parametrize(
    ("sizes", "takes", "steps"),
    [((7, 3), (2, 2), 30), ((50, 4), (16, 16), 40), ((5, 4), (4, 0), 9), ((3, 5), (7, 1), 11),
     ((6, 6), (3, 3), 0), ((10,), (10,), 5), ((4, 9, 2), (3, 9, 5), 13), ((1, 3), (1, 2), 4)],
)  # fmt: skip
def test_endless_shuffles_serve_what_a_loop_of_streams_serves(
    sizes: tuple[int, ...], takes: tuple[int, ...], steps: int
) -> None:
    """The whole schedule at once is what streams built in order on one generator serve, step
    by step, each taking its count in turn; the generator ends in the same state."""
    g = torch.Generator().manual_seed(3)
    streams = [EndlessShuffle(n, g) for n in sizes]
    served: list[list[torch.Tensor]] = [[] for _ in sizes]
    for _ in range(steps):
        for i, k in enumerate(takes):
            if k:
                served[i].append(streams[i].take(k))
    g2 = torch.Generator().manual_seed(3)
    at_once = endless_shuffles(sizes, takes, steps, g2)
    for i, k in enumerate(takes):
        expected = torch.stack(served[i]) if served[i] else torch.empty(steps, k, dtype=torch.long)
        assert torch.equal(at_once[i], expected)
    assert torch.equal(torch.randperm(50, generator=g), torch.randperm(50, generator=g2))


def test_endless_shuffles_refuse_an_empty_stream() -> None:
    from fewclip.errors import InvalidValueError

    with pytest.raises(InvalidValueError) as e:
        endless_shuffles((3, 0), (1, 1), 2, torch.Generator())
    assert str(e.value) == "sizes: expected positive stream sizes, found (3, 0)"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("decoupled", [True, False])
def test_fused_adam_follows_torch_adam_bit_for_bit(dtype: torch.dtype, decoupled: bool) -> None:
    torch.manual_seed(0)
    start = torch.randn(7, 13, dtype=dtype)
    param = torch.nn.Parameter(start.clone())
    kind = torch.optim.AdamW if decoupled else torch.optim.Adam
    optim = kind([param], lr=0.1, weight_decay=0.05, eps=1e-6, fused=True)
    mine = start.clone()
    fused = FusedAdam(mine, decoupled=decoupled, weight_decay=0.05, eps=1e-6)
    for i in range(25):
        grad = torch.randn(7, 13, dtype=dtype)
        optim.param_groups[0]["lr"] = 0.1 / (1 + i)
        param.grad = grad.clone()
        optim.step()
        fused.step(grad, 0.1 / (1 + i))
    assert torch.equal(param.detach(), mine)
    assert not torch.equal(mine, start)


@pytest.mark.parametrize(("momentum", "weight_decay"), [(0.9, 5e-4), (0.9, 0.0), (0.0, 1e-2)])
def test_fused_sgd_follows_torch_sgd_bit_for_bit(momentum: float, weight_decay: float) -> None:
    torch.manual_seed(0)
    start = torch.randn(11, 5, dtype=torch.float64)
    param = torch.nn.Parameter(start.clone())
    optim = torch.optim.SGD(
        [param], lr=0.1, momentum=momentum, weight_decay=weight_decay, fused=True
    )
    mine = start.clone()
    fused = FusedSGD(mine, momentum=momentum, weight_decay=weight_decay)
    for i in range(6):
        grad = torch.randn(11, 5, dtype=torch.float64)
        optim.param_groups[0]["lr"] = 0.1 / (1 + i)
        param.grad = grad.clone()
        optim.step()
        fused.step(grad, 0.1 / (1 + i))
    assert torch.equal(mine, param.detach())
    assert not torch.equal(mine, start)


def test_keep_best_ties() -> None:
    t = torch.zeros(2)
    first, last = KeepBest(ties="first"), KeepBest(ties="last")
    for epoch, score in enumerate([0.5, 0.7, 0.7, 0.6], start=1):
        t += 1
        first.offer(score, epoch, t)
        last.offer(score, epoch, t)
    assert (first.epoch, first.state[0].tolist()) == (2, [2.0, 2.0])  # a copy, not a view
    assert (last.epoch, last.state[0].tolist()) == (3, [3.0, 3.0])
    first.keep(9, t)
    assert first.epoch == 9
    assert first.state[0].tolist() == [4.0, 4.0]
    with pytest.raises(ValueError, match="ties: expected"):
        KeepBest(ties="best")


def test_no_method_keeps_a_private_training_loop() -> None:
    """Schedules, view draws and batch loops come from methods/_training.py only."""
    import pathlib

    import fewclip.methods as pkg

    for path in pathlib.Path(pkg.__path__[0]).glob("*.py"):
        if path.name == "_training.py":
            continue
        src = path.read_text()
        for copy in ("lr_scheduler", "randint(n_views", "math.cos(", "self.batch_size)]"):
            assert copy not in src, f"{path.name} keeps its own {copy!r}"


@pytest.mark.parametrize(
    ("name", "params", "lr", "epochs"),
    [
        ("clip-adapter", {"epochs": 200}, 2e-3, 200),
        ("taskres", {"epochs": 200}, 2e-3, 200),
        ("zs-lp", {}, 0.1, 300),  # the default schedule: 300 epochs at 0.1
    ],
)
def test_the_reference_schedules_by_hand(name: str, params: dict, lr: float, epochs: int) -> None:
    """Epoch 0 warms up at 1e-5; the cosine starts at epoch 1 at the full rate (Dassl's
    recount) and is at cos(π·198/T) in the last epoch, written out by hand."""
    m = methods.create(name, **params)
    assert m._lr_at(0) == 1e-5
    assert m._lr_at(1) == pytest.approx(lr)
    assert m._lr_at(2) == pytest.approx(0.5 * lr * (1 + math.cos(math.pi / epochs)))
    last = 0.5 * lr * (1 + math.cos(math.pi * (epochs - 2) / epochs))
    assert m._lr_at(epochs - 1) == pytest.approx(last)
