"""``SyntheticSource`` and ``synthetic_prepare`` over structured, calibrated worlds."""

from __future__ import annotations

import torch

from fewclip.bench.synthetic import SyntheticSource, synthetic_prepare
from fewclip.functional import l2_normalize
from fewclip.testing.synthetic import CALIBRATED, CLIP_RN50, PRESETS, SyntheticWorld

#: 8 classes in 64 dimensions with the shared calibrated knobs (small and fast)
SMALL = {**CLIP_RN50, "rank": 8, "class_spread": 0.8, "misalign": 0.5, "text_scale": 0.4}


def test_synthetic_source_rows_of_a_structured_world() -> None:
    """A bench source over a structured world draws the same structure as the world."""
    w = SyntheticWorld(8, 64, seed=1, **SMALL)
    src = SyntheticSource(w, {"train": 80, "test": 800}, n_views=2)
    test = src.features("test")
    # same per-row noise through the world's own formula
    g = torch.Generator().manual_seed(((1 * 1_000_003 + 3 * 7_919) * 2_000_003 + 5) % 2**63)
    head = torch.randn(65, generator=g)
    scale = w.feature_norm * (1 + 0.1 * head[:1])
    want = w.clean(test.labels[5:6], head[None, 1:], rowwise=True) * scale
    assert torch.equal(test.features[5:6], want.to(test.features.dtype))
    assert torch.equal(src.features("test", [5, 6]).features[0], test.features[5])
    zs = float(
        ((l2_normalize(test.features) @ w.text_weights.T).argmax(1) == test.labels).float().mean()
    )
    assert abs(zs - w.zero_shot_accuracy()) < 0.08, (zs, w.zero_shot_accuracy())


def test_synthetic_prepare_uses_the_calibrated_presets() -> None:
    prep = synthetic_prepare(n_views=2)("dtd", "RN50")
    assert prep.meta["calibrated_preset"] == "dtd"
    world = prep.source.world
    assert world.rank == CLIP_RN50["rank"]
    assert world.class_spread == CALIBRATED["dtd"]["class_spread"]
    # the very world the knobs were fitted on, whatever the backbone's name
    assert torch.equal(prep.text_weights, SyntheticWorld.from_preset("dtd").text_weights)
    assert prep.source.labels("test").numel() == PRESETS["dtd"].test
    plain = synthetic_prepare(n_views=2, calibrate=False)("dtd", "RN50")
    assert plain.source.world.rank is None
    assert "calibrated_preset" not in plain.meta
    assert plain.fingerprint != prep.fingerprint
