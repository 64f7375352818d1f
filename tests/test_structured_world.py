"""The structured synthetic world (``SyntheticWorld(..., rank=r)``) and what it leaves alone.

The isotropic model's sampling streams are pinned to numbers produced before the structured
model existed, so an explicit-knob world stays reproducible.
"""

from __future__ import annotations

import pytest
import torch

from fewclip.errors import InvalidValueError
from fewclip.functional import l2_normalize
from fewclip.testing import calibration
from fewclip.testing.synthetic import CALIBRATED, CLIP_RN50, PRESETS, SyntheticWorld

#: 8 classes in 64 dimensions with the shared calibrated knobs (small and fast)
SMALL = {**CLIP_RN50, "rank": 8, "class_spread": 0.8, "misalign": 0.5, "text_scale": 0.4}


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return l2_normalize(a.double()) @ l2_normalize(b.double()).T


def test_explicit_knob_worlds_keep_their_streams() -> None:
    """Numbers of the isotropic model as generated before the structured model was added."""
    w = SyntheticWorld(
        4, 8, seed=3, sep=0.3, spread=0.05, gap=0.7, text_noise=0.02, view_noise=0.01,
        test_size=8, val_size=8,
    )  # fmt: skip
    t = w.task(2, seed=2, views=2, val="fewshot")
    assert t.val is not None
    assert t.support.views is not None
    got = {
        "support": t.support.features[1, :3],
        "view": t.support.views[1, -1, :3],
        "val": t.val.features[0, :3],
        "test": w.test_set().features[-1, :3],
        "text": w.text_weights[2, :3],
        "preset text": SyntheticWorld.from_preset("dtd", calibrated=False).text_weights[0, :3],
    }
    want = {
        "support": [4.606425762176514, 1.6192158460617065, 6.208110332489014],
        "view": [5.33690881729126, -0.1986302137374878, 6.9906086921691895],
        "val": [5.178966522216797, 2.404996871948242, 5.188570499420166],
        "test": [6.110060691833496, -0.7125452756881714, 8.202109336853027],
        "text": [0.5789850950241089, -0.2807316184043884, 0.5011282563209534],
        "preset text": [-0.03863617032766342, -0.015591279603540897, -0.032159868627786636],
    }
    for what, values in want.items():
        expected = torch.tensor(values, dtype=torch.float64)
        torch.testing.assert_close(got[what].double(), expected, rtol=0, atol=1e-6, msg=what)
    assert SyntheticWorld.from_preset("dtd", calibrated=False).rank is None


@pytest.mark.parametrize("knob", ["class_spread", "anisotropy", "misalign", "text_scale"])
def test_structured_knobs_need_a_rank(knob: str) -> None:
    with pytest.raises(InvalidValueError, match=f"{knob}.*rank="):
        SyntheticWorld(5, 32, **{knob: 0.5})


def test_structured_knobs_are_checked() -> None:
    with pytest.raises(InvalidValueError, match="rank: expected .* dim=32"):
        SyntheticWorld(5, 32, rank=32)
    with pytest.raises(InvalidValueError, match="misalign: expected non-negative values"):
        SyntheticWorld(5, 32, rank=4, misalign=-1.0)


def test_images_cluster_and_views_stay_near_their_image() -> None:
    w = SyntheticWorld(8, 64, seed=1, **SMALL)
    fs = w.sample([30] * 8, stream=9, views=2)
    sim = _cos(fs.features, fs.features)
    same = (fs.labels[:, None] == fs.labels[None]) & ~torch.eye(240, dtype=torch.bool)
    other = fs.labels[:, None] != fs.labels[None]
    within, between = float(sim[same].mean()), float(sim[other].mean())
    assert within > between + 0.15, (within, between)
    assert fs.views is not None
    to_view = torch.cosine_similarity(fs.views[0].double(), fs.features.double(), dim=1)
    assert float(to_view.min()) > within, (float(to_view.min()), within)


def test_the_text_error_is_the_misalignment() -> None:
    """A perfectly aligned text is the nearest-mean rule; misalignment lowers zero-shot;
    text_scale changes the logits' contrast, not the decisions (much)."""
    w = SyntheticWorld(8, 64, seed=1, **{**SMALL, "misalign": 0.0}, test_size=4000)
    test = w.test_set()
    aligned = w.zero_shot_accuracy(test)
    w.misalign = 1.0
    misaligned = w.zero_shot_accuracy(test)
    assert aligned > misaligned + 0.1, (aligned, misaligned)
    conf = calibration.zero_shot_confidence(w, test)
    w.text_scale = 0.2
    assert calibration.zero_shot_confidence(w, test) < conf - 10
    assert abs(w.zero_shot_accuracy(test) - misaligned) < 0.05


def test_calibrate_tunes_the_misalignment_of_a_structured_world() -> None:
    w = SyntheticWorld(8, 64, seed=2, **{**SMALL, "misalign": 0.0}, test_size=4000)
    w.calibrate(0.5, probe=100)
    assert w.misalign > 0
    assert w.text_noise == CLIP_RN50["text_noise"]
    assert abs(w.zero_shot_accuracy() - 0.5) < 0.05


def test_within_class_spread_follows_the_anisotropy() -> None:
    w = SyntheticWorld(8, 64, seed=1, **SMALL)
    k = w.within_class_std()
    assert k.shape == (8,)
    assert torch.all(k[1:] > k[:-1])
    assert float(k[-1] / k[0]) == pytest.approx(float(torch.exp(torch.tensor(1.6))))
    assert float(k.square().mean().sqrt()) == pytest.approx(0.8 / 8**0.5)


def test_presets_are_calibrated_and_overridable() -> None:
    assert set(CALIBRATED) == set(PRESETS) == set(calibration.TARGETS)
    w = SyntheticWorld.from_preset("eurosat")
    assert w.rank == CLIP_RN50["rank"]
    assert w.misalign == CALIBRATED["eurosat"]["misalign"]
    assert (w.test_size, w.val_size) == (PRESETS["eurosat"].test, PRESETS["eurosat"].val)
    assert SyntheticWorld.from_preset("eurosat", misalign=0.0).misalign == 0.0
    assert calibration.validation_rule("imagenet") == "fewshot"
    assert calibration.validation_rule("dtd") == "full"
    assert calibration.method_params("fgvc", "tip-adapter")["search_scale"] == [30, 30]
