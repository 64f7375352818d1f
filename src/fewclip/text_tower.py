"""The text tower as prompt learners see it: token embeddings in, projected text features out.

Prompt learning (CoOp and its successors) trains vectors that replace some token embeddings of a
prompt, so it needs the text encoder *below* the tokenizer: embed the tokens, splice learned
vectors in, run the transformer. A backbone provides that as a :class:`TextTower` (see
``Backbone.text_tower()``), and a method receives it through ``Task.text_tower``; the feature
world never imports a model library.

The forward pass is CLIP's (``encode_text`` of OpenAI CLIP and open_clip)::

    x = E + P[:L]                      # (N, L, W) token embeddings plus positions
    x = transformer(x, causal mask)    # position t attends to positions ≤ t only
    f = ln_final(x)[n, eot_n] @ Π      # the EOT token's output, projected to D

**Trimming.** The mask is causal and LayerNorm and the MLP act per token, so the output at the
EOT position does not depend on the tokens after it. :meth:`TextTower.encode` therefore runs the
transformer on the first ``L = max(eot) + 1`` positions only (with ``P[:L]`` and the mask's
``L × L`` corner) instead of the full context (77 for CLIP): the same features up to float
reordering, for a fraction of the cost when prompts are short.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fewclip.errors import InvalidValueError

__all__ = ["TextTower", "causal_mask"]


def causal_mask(
    length: int, *, dtype: torch.dtype = torch.float32, device: torch.device | None = None
) -> Tensor:
    """The additive (L, L) causal mask: 0 on and below the diagonal, −inf above."""
    return torch.full((length, length), float("-inf"), dtype=dtype, device=device).triu_(1)


class TextTower(nn.Module, ABC):
    """A CLIP text encoder opened up below the tokenizer (see the module docstring).

    Attributes:
        width: token embedding width W.
        context_length: tokens per prompt after tokenization (77 for CLIP).
        embed_dim: dimension D of the projected features (the image features' dimension).
        logit_scale: the model's learned logit scale, ``exp`` applied (100 for OpenAI CLIP).

    Subclasses implement :meth:`tokenize`, :meth:`embed`, :meth:`eot_index`, :meth:`_blocks`
    and :meth:`_project`, and provide ``positional_embedding`` (context_length, W) and
    ``ln_final``.
    """

    width: int
    context_length: int
    embed_dim: int
    logit_scale: float
    positional_embedding: Tensor
    ln_final: nn.Module

    @abstractmethod
    def tokenize(self, texts: Sequence[str]) -> Tensor:
        """(N, context_length) token ids of ``texts`` (padded with the model's pad id)."""

    @abstractmethod
    def embed(self, tokens: Tensor) -> Tensor:
        """(N, L, W) token embeddings of ``tokens`` (N, L), without positions."""

    @abstractmethod
    def eot_index(self, tokens: Tensor) -> Tensor:
        """(N,) position of each prompt's end-of-text token (the pooled position)."""

    @abstractmethod
    def _blocks(self, x: Tensor, mask: Tensor) -> Tensor:
        """The transformer blocks on (N, L, W) with the additive (L, L) ``mask``."""

    @abstractmethod
    def _project(self, pooled: Tensor) -> Tensor:
        """(N, W) pooled outputs → (N, D) text features (CLIP's ``text_projection``)."""

    @property
    def dtype(self) -> torch.dtype:
        return self.positional_embedding.dtype

    @property
    def device(self) -> torch.device:
        return self.positional_embedding.device

    def encode(self, embeddings: Tensor, eot: Tensor, *, trim: bool = True) -> Tensor:
        """(N, D) projected text features of token ``embeddings`` (N, L, W) pooled at ``eot``.

        With ``trim`` (the default) only the first ``max(eot) + 1`` positions run through the
        transformer; ``trim=False`` runs all ``L`` (the reference computation).
        """
        if embeddings.ndim != 3 or embeddings.shape[2] != self.width:
            raise InvalidValueError(
                f"embeddings: expected (N, L, {self.width}), found {tuple(embeddings.shape)}"
            )
        n, length = embeddings.shape[:2]
        if eot.shape != (n,):
            raise InvalidValueError(f"eot: expected shape ({n},), found {tuple(eot.shape)}")
        if trim and n:
            length = int(eot.max()) + 1
        x = embeddings[:, :length] + self.positional_embedding[:length].to(embeddings.dtype)
        x = self._blocks(x, causal_mask(length, dtype=x.dtype, device=x.device))
        x = self.ln_final(x)
        return self._project(x[torch.arange(n, device=x.device), eot])

    def encode_texts(self, texts: Sequence[str], *, trim: bool = True) -> Tensor:
        """(N, D) features of ``texts``: :meth:`encode` of their token embeddings."""
        tokens = self.tokenize(texts).to(self.device)
        return self.encode(self.embed(tokens), self.eot_index(tokens), trim=trim)
