"""Zero-shot CLIP: ``scale·x·Wᵀ`` with the text classifier W (Radford et al., 2021)."""

from __future__ import annotations

from torch import Tensor

from fewclip.functional import l2_normalize
from fewclip.methods.base import Method, register
from fewclip.task import Task
from fewclip.text_tower import TextTower

__all__ = ["ZeroShot"]


@register("zero-shot")
class ZeroShot(Method):
    """Zero-shot classifier: ``logits = scale · x · Wᵀ`` for L2-normalised x and W.

    Args:
        scale: logit scale; 100 as in Tip-Adapter's code (CLIP's learned temperature).
        dtype: compute precision, ``"float32"`` (default), ``"float16"`` or ``"float64"``.
        device: torch device for the fitted tensors and the computation.

    Attributes:
        text_weights_ (C, D) tensor: the classifier W, the task's L2-normalised text weights.
    """

    training_free = True
    uses_validation = False
    new_class_refusal = None  # the classifier is the classes' text weights

    _state_tensors = ("text_weights_",)

    def __init__(self, *, scale: float = 100.0, dtype: str = "float32", device: str = "cpu"):
        self.scale = scale
        self.dtype = dtype
        self.device = device

    def _fit(self, task: Task) -> None:
        self.text_weights_ = l2_normalize(self._to(task.text_weights))

    def _for_classes(
        self, classnames: list[str], text_weights: Tensor, text_tower: TextTower | None
    ) -> None:
        self.text_weights_ = l2_normalize(self._to(text_weights))

    def _logits(self, x: Tensor) -> Tensor:
        return self.scale * (x @ self.text_weights_.T)
