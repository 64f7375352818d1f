"""Synthetic CLIP-like worlds: few-shot methods beat zero-shot; cache methods grow with shots."""

import itertools

import pytest
from tests.methods._helpers import GDA_PROKER_LPPP_CLAP, TASKRES_APE_TIPX_CMLP

from fewclip import methods
from fewclip.testing import SyntheticWorld


def _curves(world, names, shots_list, seeds):
    test = world.test_set()
    acc = {n: [] for n in names}
    for shots in shots_list:
        for n in names:
            per_seed = []
            for seed in seeds:
                kw = {"epochs": 20, "search_step": (50, 10)} if n == "tip-adapter-f" else {}
                if n == "tip-adapter":
                    kw = {"search_step": (50, 10)}
                m = methods.create(n, **kw).fit(world.task(shots, seed=seed, views=4, val="full"))
                per_seed.append(m.score(test.features, test.labels))
            acc[n].append(sum(per_seed) / len(per_seed))
    return acc


def test_synthetic_world_cache_methods_beat_zero_shot_and_grow_with_shots():
    world = SyntheticWorld(20, 128, seed=0, gap=0.8, sep=0.2, spread=0.05, test_size=2000)
    world.calibrate(0.5)
    zs = world.zero_shot_accuracy()
    acc = _curves(world, ["tip-adapter", "tip-adapter-f"], [1, 2, 4, 8, 16], [1, 2, 3])
    for name, curve in acc.items():
        assert len(curve) == 5, (name, curve)
        assert curve[-1] > zs + 0.05, (name, curve, zs)
        assert all(b >= a - 0.005 for a, b in itertools.pairwise(curve)), (name, curve)


def test_synthetic_world_new_methods_beat_zero_shot_at_16_shots():
    world = SyntheticWorld(10, 64, seed=0, gap=0.8, sep=0.2, spread=0.05, test_size=1000)
    world.calibrate(0.5)
    test = world.test_set()
    zs = world.zero_shot_accuracy(test)
    for name in GDA_PROKER_LPPP_CLAP:
        accs = []
        for seed in (1, 2):
            val = "none" if name in ("zs-lp", "clap") else "fewshot"
            task = world.task(16, seed=seed, views=4, val=val)
            accs.append(methods.create(name).fit(task).score(test.features, test.labels))
        assert sum(accs) / len(accs) > zs + 0.05, (name, accs, zs)


# TaskRes, APE, APE-T, TIP-X and the cross-modal probe, one test each
SANITY = {  # fewer epochs / iterations than the paper defaults, to keep the suite fast
    "taskres": {"epochs": 30},
    "ape": {"search_step": (30, 10, 5)},
    "ape-t": {"search_step": (30, 10)},
    "tip-x": {"search_step": (30, 10, 10)},
    "cross-modal-lp": {"iters": 300},
}


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", TASKRES_APE_TIPX_CMLP)
def test_synthetic_world_beats_zero_shot_at_16_shots(name):
    world = SyntheticWorld(20, 128, seed=0, gap=0.8, sep=0.2, spread=0.05, test_size=2000)
    world.calibrate(0.5)
    test = world.test_set()
    zs = world.zero_shot_accuracy(test)
    accs = []
    for seed in (1, 2):
        task = world.task(16, seed=seed, views=4, val="fewshot")
        accs.append(
            methods.create(name, **SANITY[name]).fit(task).score(test.features, test.labels)
        )
    assert sum(accs) / len(accs) > zs + 0.05, (name, accs, zs)
