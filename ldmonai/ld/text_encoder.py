"""The toolkit's own small text encoder for LD's cross-attention, and learned-token artifacts.

``encoder(prompts) -> (B, L, D)`` context, with learned tokens (``add_tokens``) for Textual
Inversion, Custom Diffusion and DreamBooth identifiers. A CLIP text model loaded from a
local folder plugs in behind the same interface (:mod:`ldmonai.ld.clip_text_encoder`). Learned tokens live in
their own parameter, apart from the pretrained table, so that a scheme that trains only them
cannot move any other embedding (not even through weight decay).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ldmonai.errors import LdmonaiError

__all__ = ["LearnedTokens", "TinyTextEncoder", "WordTokenizer", "load_learned_tokens", "save_learned_tokens"]

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")


class WordTokenizer:
    """Lower-case word tokenizer with a fixed vocabulary; unknown words map to ``<unk>``."""

    def __init__(self, vocabulary: Sequence[str], max_length: int = 32) -> None:
        words = [w for w in dict.fromkeys(w.lower() for w in vocabulary) if w not in SPECIALS]
        self.words = list(SPECIALS) + words
        self.index = {w: i for i, w in enumerate(self.words)}
        self.max_length = max_length

    def __len__(self) -> int:
        return len(self.words)

    @staticmethod
    def split(text: str) -> list[str]:
        return re.findall(r"<[^>\s]+>|[\w'-]+|[^\w\s]", text.lower())

    def add(self, word: str) -> int:
        word = word.lower()
        if word not in self.index:
            self.index[word] = len(self.words)
            self.words.append(word)
        return self.index[word]

    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        """``(B, max_length)`` token ids: ``<bos> words... <eos> <pad>...``, truncated."""
        unk = self.index["<unk>"]
        rows = []
        for p in prompts:
            ids = [self.index.get(w, unk) for w in self.split(p)][: self.max_length - 2]
            ids = [1, *ids, 2]
            rows.append(ids + [0] * (self.max_length - len(ids)))
        return torch.tensor(rows, dtype=torch.long)


class LearnedTokens:
    """What every LD text encoder shares about learned tokens (TI placeholders, DreamBooth
    identifiers): their artifact, and reading it back.

    The encoder provides ``dim``, ``learned_tokens``, ``learned_embedding`` (one row per learned
    token, the only parameter TI trains), ``num_base`` (the first learned id) and
    ``add_tokens(words, initializer) -> ids``, which grows the rows with
    ``_grow_learned_embedding``.
    """

    def _grow_learned_embedding(self, table: torch.Tensor, count: int, initializer_id: int | None) -> None:
        """Append ``count`` learned rows: copies of ``table[initializer_id]`` (Textual Inversion's
        start), or small random values at the scale of the pretrained ``table``."""
        with torch.no_grad():
            if initializer_id is not None:
                rows = table[initializer_id].expand(count, -1).clone()
            else:
                rows = torch.randn(count, self.dim) * table.std()
            self.learned_embedding = nn.Parameter(torch.cat([self.learned_embedding.detach(), rows.to(self.learned_embedding)]))

    def learned_state(self) -> dict:
        """The learned tokens and their embeddings, the part of this encoder that TI and CD save."""
        return {"tokens": self.learned_tokens, "embeddings": self.learned_embedding.detach().cpu()}

    def load_learned_state(self, state: dict, path: str | os.PathLike | None = None) -> list[str]:
        """Add the tokens of :meth:`learned_state` (read from ``path``) with their embeddings."""
        tokens, emb = list(state["tokens"]), state["embeddings"]
        if not isinstance(emb, torch.Tensor) or emb.ndim != 2 or emb.shape != (len(tokens), self.dim):
            shape = tuple(emb.shape) if isinstance(emb, torch.Tensor) else type(emb).__name__
            raise LdmonaiError(f"embeddings of shape {shape} do not fit {len(tokens)} tokens of width {self.dim}",
                               path, "load it into the text encoder it was trained with")
        ids = self.add_tokens(tokens)
        with torch.no_grad():
            for tok_id, row in zip(ids, emb):
                self.learned_embedding[tok_id - self.num_base] = row.to(self.learned_embedding)
        return tokens


class TinyTextEncoder(LearnedTokens, nn.Module):
    """Word embeddings, learned positions and a small Transformer encoder.

    The offline stand-in for CLIP's text model in tests and the demo: same interface, a
    vocabulary of the prompt templates' words.

    Args:
        vocabulary: words the tokenizer knows.
        dim: context width ``D`` (the UNet's ``cross_attention_dim``).
        num_layers, num_heads: the Transformer encoder.
        max_length: ``L``.

    ``forward(prompts)`` -> ``(B, L, D)``.
    """

    def __init__(self, vocabulary: Sequence[str], dim: int = 64, num_layers: int = 2, num_heads: int = 4,
                 max_length: int = 32) -> None:
        super().__init__()
        self.tokenizer = WordTokenizer(vocabulary, max_length)
        self.token_embedding = nn.Embedding(len(self.tokenizer), dim)
        self.learned_embedding = nn.Parameter(torch.zeros(0, dim))
        self.position = nn.Parameter(torch.randn(max_length, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, num_heads, dim * 4, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.num_base = len(self.tokenizer)

    @property
    def dim(self) -> int:
        return self.token_embedding.embedding_dim

    @property
    def learned_tokens(self) -> list[str]:
        return self.tokenizer.words[self.num_base :]

    def add_tokens(self, words: Sequence[str], initializer: str | None = None) -> list[int]:
        """Add learned tokens (``<sks>``, a TI placeholder); returns their ids.

        New rows start from ``initializer``'s embedding (a word the vocabulary has, as Textual
        Inversion does) or from small random values. Build the optimizer afterwards.
        """
        new = [w.lower() for w in words if w.lower() not in self.tokenizer.index]
        if initializer is not None and initializer.lower() not in self.tokenizer.index:
            raise LdmonaiError(f"initializer word {initializer!r} is not in the vocabulary", None, "pick a word the prompts use")
        if new:
            init_id = None if initializer is None else self.tokenizer.index[initializer.lower()]
            self._grow_learned_embedding(self.token_embedding.weight, len(new), init_id)
            for w in new:
                self.tokenizer.add(w)
        return [self.tokenizer.index[w.lower()] for w in words]

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        table = torch.cat([self.token_embedding.weight, self.learned_embedding], dim=0)
        return F.embedding(ids, table)

    def forward(self, prompts: Sequence[str] | torch.Tensor) -> torch.Tensor:
        ids = prompts if isinstance(prompts, torch.Tensor) else self.tokenizer(prompts)
        ids = ids.to(self.position.device)
        x = self.embed(ids) + self.position[: ids.shape[1]]
        return self.norm(self.encoder(x, src_key_padding_mask=ids == 0))


def save_learned_tokens(encoder: LearnedTokens, path: str | os.PathLike) -> Path:
    """The small artifact of Textual Inversion: learned token names and their embeddings."""
    from ldmonai.engines.checkpoint import atomic_torch_save

    return atomic_torch_save(encoder.learned_state(), path)


def load_learned_tokens(encoder: LearnedTokens, path: str | os.PathLike) -> list[str]:
    """Add the tokens saved by :func:`save_learned_tokens` to ``encoder`` with their embeddings."""
    from ldmonai.engines.checkpoint import read_torch_file

    fix = "pass a file written by save_learned_tokens"
    state = read_torch_file(path, "learned-token file", fix)
    if not isinstance(state, dict) or not {"tokens", "embeddings"} <= set(state):
        raise LdmonaiError("not a learned-token file", path, fix)
    return encoder.load_learned_state(state, path)
