"""What the base class says when a method is used wrongly, word for word, and the rules the
base class applies for every method (lazy imports of the built-in methods)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from tests.methods._helpers import make_clustered_task, rewrite_state

from fewclip import methods
from fewclip.errors import InvalidTypeError, InvalidValueError, UnknownNameError
from fewclip.methods.base import NotFittedError
from fewclip.methods.zero_shot import ZeroShot
from fewclip.task import Task


def test_an_unfitted_method_names_its_class() -> None:
    with pytest.raises(NotFittedError) as e:
        methods.TipAdapter().logits(torch.zeros(1, 16))
    assert str(e.value) == "TipAdapter is not fitted yet; call fit(task) or load(path) first"


def test_a_prompt_learner_without_a_text_tower_says_how_to_build_one() -> None:
    t = make_clustered_task()
    task = Task(t.classnames, t.text_weights, t.support, t.val)  # without its toy tower
    with pytest.raises(InvalidValueError) as e:
        methods.create("coop").fit(task)
    assert str(e.value) == (
        "task.text_tower: coop learns prompt vectors inside the text encoder, but the task has "
        "none; build it with text_tower=backbone.text_tower() (an open_clip or transformers "
        "CLIP backbone)"
    )


def test_for_classes_names_the_bad_argument() -> None:
    m = ZeroShot().fit(make_clustered_task())
    with pytest.raises(InvalidValueError, match=r"^text_weights: "):
        m.for_classes(["a", "b"], torch.zeros(2, 3))
    with pytest.raises(InvalidTypeError) as e:
        m.for_classes(["a", "b"], torch.randn(2, 16), text_tower="RN50")
    assert str(e.value) == (
        "text_tower: expected a fewclip.text_tower.TextTower (backbone.text_tower()), found str"
    )


def test_an_unknown_method_lists_every_name() -> None:
    with pytest.raises(UnknownNameError) as e:
        methods.get("tip-adaptor")
    assert str(e.value).endswith("; available methods: " + ", ".join(methods.available()))


def test_a_method_missing_its_own_part_says_which() -> None:
    """A new method that declares a capability without its implementation is told so."""

    class Promises(methods.LinearProbe):
        batches_seeds = True
        new_class_refusal = None

    task = make_clustered_task()
    with pytest.raises(NotImplementedError) as e:
        Promises._fit_seeds([Promises()], [task])
    assert str(e.value) == "Promises sets batches_seeds but has no _fit_seeds"
    with pytest.raises(NotImplementedError) as e:
        Promises(Cs=(1.0,)).fit(task).for_classes(["a"], torch.randn(1, 16))
    assert str(e.value) == "Promises sets new_class_refusal = None but has no _for_classes"


def test_built_in_methods_are_imported_on_first_use() -> None:
    code = (
        "import sys\n"
        "from fewclip import methods\n"
        "assert 'fewclip.methods.tip_adapter' not in sys.modules\n"
        "print(methods.get('tip-adapter').__name__, methods.get('CoOp').__name__)\n"
        "assert 'fewclip.methods.tip_adapter' in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["TipAdapter", "CoOp"]


def test_coop_accepts_any_positive_logit_scale() -> None:
    from tests.methods._prompt_reference import make_task

    import fewclip.backbones as fb

    task: Task = make_task(fb.load("fewclip-tiny-vit"))
    m = methods.create("coop", epochs=0, scale=0.5).fit(task)
    assert m.scale_ == 0.5


def test_a_loaded_state_that_does_not_score_its_classes_is_named(tmp_path) -> None:
    """The probe query on load: one finite score per class name, or a message that says what
    the tensors give instead (torch's own first line when they cannot be multiplied)."""
    from fewclip.errors import DamagedFileError
    from fewclip.methods.base import REFIT_HINT

    m = ZeroShot().fit(make_clustered_task())  # 5 classes, 16 features
    cases = {
        "rows": (torch.randn(6, 16), "the fitted tensors give 6 class scores, but config.json "
                 "names 5 classes"),
        "huge": (torch.full((5, 16), 3e38), "the fitted tensors give non-finite scores"),
        "dim": (torch.randn(5, 3), "the fitted tensors do not fit config.json (5 class names, "
                "16 features): mat1 and mat2 shapes cannot be multiplied (1x16 and 3x5)"),
    }  # fmt: skip
    for name, (weights, message) in cases.items():
        folder = tmp_path / name
        m.save(folder)
        rewrite_state(folder, "zero-shot", text_weights_=weights)
        with pytest.raises(DamagedFileError) as e:
            methods.load(folder)
        assert str(e.value) == f"{folder}: {message}; {REFIT_HINT}", name
