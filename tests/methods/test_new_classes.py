"""``Method.for_classes``: which methods can score classes they were not fitted on, and how
zero-shot, CLIP-Adapter and CoOp do it (CoCoOp: tests/methods/test_cocoop.py; KgCoOp and
ProGrad keep CoOp's)."""

from __future__ import annotations

import pytest
import torch

from fewclip import methods
from fewclip.errors import InvalidTypeError, InvalidValueError
from fewclip.functional import l2_normalize
from fewclip.methods import NewClassesError, NotFittedError
from fewclip.testing.conformance import make_task

CAN = {"zero-shot", "clip-adapter", "coop", "cocoop", "kgcoop", "prograd"}


def test_the_methods_that_can_score_new_classes() -> None:
    """Zero-shot CLIP (text weights), CLIP-Adapter (an image-side adapter, any text weights)
    and the four prompt learners (a learned context, any class name) can; every cache, linear
    head, per-class residual or prototype cannot, and says why."""
    can = {m for m in methods.available() if methods.get(m).new_class_refusal is None}
    assert can == CAN
    for name in sorted(set(methods.available()) - CAN):
        reason = methods.get(name).new_class_refusal
        assert isinstance(reason, str)
        assert "training class" in reason


def test_zero_shot_on_new_classes_is_zero_shot_of_those_classes() -> None:
    task, other = make_task(), make_task(3, seed=7)
    x = torch.randn(6, task.dim, generator=torch.Generator().manual_seed(1))
    new = methods.create("zero-shot").fit(task).for_classes(other.classnames, other.text_weights)
    direct = methods.create("zero-shot").fit(other)
    torch.testing.assert_close(new.logits(x), direct.logits(x))


def test_clip_adapter_keeps_its_adapter() -> None:
    task, other = make_task(), make_task(3, seed=7)
    x = torch.randn(6, task.dim, generator=torch.Generator().manual_seed(1))
    m = methods.create("clip-adapter", epochs=3).fit(task)
    new = m.for_classes(other.classnames, other.text_weights)
    assert new.modules_ is m.modules_  # the trained adapter, shared, not retrained
    adapter = m.modules_["visual"]
    with torch.no_grad():
        f = m.ratio * adapter(x) + (1 - m.ratio) * x
    want = 100.0 * l2_normalize(f) @ l2_normalize(other.text_weights).T
    torch.testing.assert_close(new.logits(x), want, rtol=1e-5, atol=1e-4)


def test_coop_builds_the_new_prompts_with_its_context() -> None:
    task, other = make_task(), make_task(3, seed=7)
    x = torch.randn(6, task.dim, generator=torch.Generator().manual_seed(1))
    m = methods.create("coop", epochs=2, n_ctx=4).fit(task)
    new = m.for_classes(other.classnames, other.text_weights, text_tower=task.text_tower)
    # the same context, assembled with the new names: what a CoOp fitted with that context on
    # the new classes would predict (0 epochs from the learned context)
    from fewclip.methods.coop import PromptContext

    tower = task.text_tower
    assert tower is not None
    prompts = PromptContext(tower, other.classnames, n_ctx=4, init="", position="end")
    with torch.no_grad():
        text = l2_normalize(tower.encode(prompts.assemble(m.ctx_), prompts.eot))
    torch.testing.assert_close(new.logits(x), m.scale_ * l2_normalize(x) @ text.T)
    with pytest.raises(InvalidValueError) as e:
        m.for_classes(other.classnames, other.text_weights)  # no tower: no prompts
    assert str(e.value) == (
        "text_tower: coop builds the new classes' prompts through the text encoder; pass "
        "text_tower=backbone.text_tower() (the backbone it was fitted with)"
    )
    csc = methods.create("coop", epochs=1, n_ctx=4, csc=True).fit(task)
    with pytest.raises(NewClassesError) as refused:
        csc.for_classes(other.classnames, other.text_weights, text_tower=task.text_tower)
    assert str(refused.value) == (
        "coop with csc=True cannot score classes it was not fitted on: its class-specific "
        "contexts exist for the training classes only"
    )


@pytest.mark.parametrize(
    ("name", "params"),
    [("kgcoop", {}), ("prograd", {}), ("prograd", {"n_ctx": 8, "ctx_init": "a photo of"})],
    ids=["kgcoop", "prograd", "prograd-8"],
)
def test_prompt_learners_rebuild_their_own_prompt_layout(name, params) -> None:
    """KgCoOp and ProGrad at their default contexts (ProGrad's: 16 vectors ending in the
    phrase's, not the phrase's word count) score their training classes again as themselves,
    and new classes through the same layout with the new names."""
    from fewclip.methods.coop import PromptContext

    task, other = make_task(), make_task(3, seed=7)
    x = torch.randn(6, task.dim, generator=torch.Generator().manual_seed(1))
    m = methods.create(name, epochs=1, **params).fit(task)
    same = m.for_classes(task.classnames, task.text_weights, text_tower=task.text_tower)
    torch.testing.assert_close(same.logits(x), m.logits(x))
    tower = task.text_tower
    assert tower is not None
    prompts = PromptContext(
        tower, other.classnames, n_ctx=m.n_ctx, init=m.ctx_init, position="end",
        keep_n_ctx=name == "prograd",
    )  # fmt: skip
    assert prompts.n_ctx == m.ctx_.shape[0]
    with torch.no_grad():
        text = l2_normalize(tower.encode(prompts.assemble(m.ctx_), prompts.eot))
    new = m.for_classes(other.classnames, other.text_weights, text_tower=tower)
    torch.testing.assert_close(new.logits(x), m.scale_ * l2_normalize(x) @ text.T)


def test_cocoop_shifts_its_context_in_front_of_the_new_names() -> None:
    """Each image's shifted context, assembled with the new names one image at a time
    (CoOp's assembly, not CoCoOp's batched one), through the tower."""
    from fewclip.methods.cocoop import meta_net
    from fewclip.methods.coop import PromptContext

    task, other = make_task(), make_task(3, seed=7)
    tower = task.text_tower
    assert tower is not None
    x = l2_normalize(torch.randn(4, task.dim, generator=torch.Generator().manual_seed(1)))
    m = methods.create("cocoop", epochs=1, ctx_init="", n_ctx=4).fit(task)
    new = m.for_classes(other.classnames, other.text_weights, text_tower=tower)
    prompts = PromptContext(tower, other.classnames, n_ctx=4, init="", position="end")
    rows = []
    with torch.no_grad():
        for xi in x:
            shift = meta_net(xi[None], m.meta_w1_, m.meta_b1_, m.meta_w2_, m.meta_b2_)
            text = l2_normalize(tower.encode(prompts.assemble(m.ctx_ + shift), prompts.eot))
            rows.append(m.scale_ * xi @ text.T)
    torch.testing.assert_close(new.logits(x), torch.stack(rows), rtol=1e-5, atol=1e-4)
    assert m.logits(x).shape == (4, len(task.classnames))  # the original is unchanged
    again = m.for_classes(task.classnames, task.text_weights, text_tower=tower)
    torch.testing.assert_close(again.logits(x), m.logits(x))


def test_for_classes_checks_its_inputs() -> None:
    task = make_task()
    m = methods.create("zero-shot")
    with pytest.raises(NotFittedError):
        m.for_classes(["a"], torch.randn(1, task.dim))
    m.fit(task)
    with pytest.raises(InvalidValueError, match="one row per class"):
        m.for_classes(["a", "b"], torch.randn(3, task.dim))
    with pytest.raises(InvalidValueError, match="feature dimension"):
        m.for_classes(["a"], torch.randn(1, task.dim + 1))
    with pytest.raises(InvalidValueError, match="non-empty list"):
        m.for_classes([], torch.randn(0, task.dim))
    with pytest.raises(InvalidTypeError, match="TextTower"):
        m.for_classes(["a"], torch.randn(1, task.dim), text_tower="tower")  # type: ignore[arg-type]
    tip = methods.create("tip-adapter", search=False).fit(task)
    with pytest.raises(NewClassesError, match="tip-adapter cannot score classes"):
        tip.for_classes(["a"], torch.randn(1, task.dim))
