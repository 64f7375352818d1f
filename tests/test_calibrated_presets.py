"""Each calibrated synthetic preset lands on CLIP RN50's published numbers.

``SyntheticWorld.from_preset(name)`` (world seed 0, D = 1024, the preset's full test set):
zero-shot accuracy and 16-shot Tip-Adapter (draw seed 1, 10 views, the ``tip-adapter`` bench
preset's search ranges, the full validation split, or a few-shot one for ImageNet) within ±2
points of ``calibration.TARGETS``, and images whose 1-nearest neighbour among one shot a class
is right far more often than chance. ImageNet is the expensive case (a 50,000 × 16,000 cache
product); see docs/benchmarks.md for the times.
"""

from __future__ import annotations

import pytest
import torch

from fewclip.testing import calibration
from fewclip.testing.synthetic import SyntheticWorld


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", list(calibration.TARGETS))
def test_calibrated_preset_lands_on_its_published_numbers(name: str) -> None:
    world = SyntheticWorld.from_preset(name)
    test = world.test_set()
    assert len(test.labels) == world.test_size
    zs_target, tip_target = calibration.TARGETS[name]
    zero_shot = 100 * world.zero_shot_accuracy(test)
    tip = calibration.evaluate(world, "tip-adapter", 16, test=test)
    nn1 = calibration.nearest_neighbour_accuracy(world, 1, test=test)
    chance = 100 / world.n_classes
    assert abs(zero_shot - zs_target) <= 2, (name, zero_shot, zs_target)
    assert abs(tip - tip_target) <= 2, (name, tip, tip_target)
    assert nn1 >= 3 * chance + 5, (name, nn1, chance)
