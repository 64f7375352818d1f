"""A toy :class:`~fewclip.text_tower.TextTower` for synthetic tasks: a one-layer causal
transformer over a hashed word vocabulary, seeded, in pure torch (no model library, no files).

It gives prompt learners (CoOp) a real text encoder to train through in the conformance suite and
in tests on feature-level tasks. Its features are random functions of the words: it is not CLIP
and says nothing about accuracy.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fewclip.text_tower import TextTower

__all__ = ["ToyTextTower"]

_WORDS = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


class ToyTextTower(TextTower):
    """A seeded toy text tower with ``embed_dim`` output features.

    Tokens: 0 pads, ``vocab − 2`` starts a prompt (SOS) and ``vocab − 1`` ends it (EOT, the
    largest id, as in CLIP); each lower-cased word or punctuation mark maps to
    ``1 + crc32(word) mod (vocab − 3)``. Prompts longer than the context are cut, keeping EOT.
    """

    def __init__(
        self,
        embed_dim: int,
        *,
        width: int = 16,
        heads: int = 2,
        context_length: int = 24,
        vocab: int = 512,
        logit_scale: float = 100.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.vocab = vocab
        self.width = width
        self.context_length = context_length
        self.embed_dim = embed_dim
        self.logit_scale = float(logit_scale)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.token_embedding = nn.Embedding(vocab, width)
            self.block = nn.TransformerEncoderLayer(
                width, heads, dim_feedforward=2 * width, dropout=0.0, batch_first=True,
                norm_first=True,
            )  # fmt: skip
            self.ln_final = nn.LayerNorm(width)
        self.positional_embedding = nn.Parameter(
            0.1 * torch.randn(context_length, width, generator=g)
        )
        self.projection = nn.Parameter(torch.randn(width, embed_dim, generator=g) / width**0.5)
        self.eval()
        self.requires_grad_(False)

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for i, text in enumerate(texts):
            words = _WORDS.findall(text.lower())
            ids = [1 + zlib.crc32(w.encode()) % (self.vocab - 3) for w in words]
            ids = [self.vocab - 2, *ids[: self.context_length - 2], self.vocab - 1]
            out[i, : len(ids)] = torch.tensor(ids)
        return out

    def embed(self, tokens: Tensor) -> Tensor:
        out: Tensor = self.token_embedding(tokens)
        return out

    def eot_index(self, tokens: Tensor) -> Tensor:
        return tokens.argmax(dim=-1)

    def _blocks(self, x: Tensor, mask: Tensor) -> Tensor:
        out: Tensor = self.block(x, src_mask=mask)
        return out

    def _project(self, pooled: Tensor) -> Tensor:
        return pooled @ self.projection.to(pooled.dtype)
