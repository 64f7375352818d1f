"""CLIP-Adapter: zero-ratio limits, residual formula, variants, hand-written backward, schedule."""

import pytest
import torch

from fewclip import functional as F
from fewclip import methods


@pytest.mark.parametrize("branch", ["visual", "both"])
def test_clip_adapter_ratio_zero_equals_zero_shot(task, queries, branch):
    zs = methods.create("zero-shot").fit(task)
    ca = methods.create("clip-adapter", ratio=0.0, text_ratio=0.0, branch=branch, epochs=3).fit(
        task
    )
    torch.testing.assert_close(ca.logits(queries), zs.logits(queries))


def test_clip_adapter_residual_formula(task, queries):
    ca = methods.create("clip-adapter", ratio=0.3, epochs=2, reduction=2).fit(task)
    a = ca.modules_["visual"].fc
    assert a[0].weight.shape == (8, 16)
    assert a[0].bias is None
    assert a[2].bias is None
    f = queries
    adapted = torch.relu(torch.relu(f @ a[0].weight.T) @ a[2].weight.T)
    blended = 0.3 * adapted + 0.7 * f
    w = F.l2_normalize(task.text_weights)
    expected = 100 * F.l2_normalize(blended) @ w.T
    torch.testing.assert_close(ca.logits(queries), expected, rtol=1e-5, atol=1e-4)


def test_clip_adapter_variants(task, queries, tmp_path):
    text = methods.create("clip-adapter", branch="text", epochs=3).fit(task)
    assert set(text.modules_.keys()) == {"text"}
    learned = methods.create("clip-adapter", branch="both", learn_ratio=True, epochs=3).fit(task)
    assert set(learned.modules_.keys()) == {"visual", "text", "ratio"}
    assert 0 < learned.ratio_ < 1
    assert 0 < learned.text_ratio_ < 1
    learned.save(tmp_path / "l")
    assert torch.equal(methods.load(tmp_path / "l").logits(queries), learned.logits(queries))
    untrained = methods.create("clip-adapter", learn_ratio=True, epochs=0, ratio=0.6).fit(task)
    assert untrained.ratio_ == pytest.approx(0.6, abs=1e-4)


@pytest.mark.parametrize("ratio", [0.2, 0.6, 0.0])
def test_clip_adapter_hand_written_backward_matches_autograd(task, queries, ratio):
    """The fast visual-branch trainer follows the same SGD path as autograd + torch.optim."""
    params = dict(ratio=ratio, epochs=4, reduction=2, batch_size=8, dtype="float64")
    fast = methods.create("clip-adapter", **params).fit(task)
    slow = methods.create("clip-adapter", **params)
    slow._train = slow._train_autograd  # type: ignore[method-assign]
    slow.fit(task)
    start = methods.create("clip-adapter", **{**params, "epochs": 0}).fit(task)
    params_of = [list(m.modules_.parameters()) for m in (fast, slow, start)]
    for a, b, a0 in zip(*params_of, strict=True):
        # the autograd path computes its loss on float32 logits, hence not 1e-12
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)
        # weight decay moves the weights even when ratio 0 cuts the loss off from the adapter
        assert (a - a0).abs().max() > 1e-6
    torch.testing.assert_close(fast.logits(queries), slow.logits(queries))
