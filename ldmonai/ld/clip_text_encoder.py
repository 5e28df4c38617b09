"""A CLIP text model from a local folder as LD's text encoder (``transformers``, the ``[sd]`` extra).

Same interface as :class:`~ldmonai.ld.text_encoder.TinyTextEncoder`: ``encoder(prompts) ->
(B, 77, D)`` and learned tokens for Textual Inversion, Custom Diffusion and DreamBooth. New
tokens are appended to the tokenizer, and their embeddings live in ``learned_embedding``; a
forward hook on CLIP's token embedding substitutes them, so TI trains one small tensor and
the pretrained table cannot move.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ldmonai.errors import LdmonaiError, first_line
from ldmonai.ld.text_encoder import LearnedTokens

__all__ = ["ClipTextEncoder"]


def _component(folder: Path, name: str) -> Path:
    """``folder/name`` in a Stable Diffusion folder, or ``folder`` itself for a bare CLIP folder."""
    return folder / name if (folder / name).is_dir() else folder


class ClipTextEncoder(LearnedTokens, nn.Module):
    """``CLIPTextModel`` + ``CLIPTokenizer`` read from ``path`` (never downloaded).

    Args:
        path: a Stable Diffusion folder (``text_encoder/`` and ``tokenizer/``) or a folder
            holding one CLIP text model and its tokenizer files.
        max_length: prompt length in tokens (default: the tokenizer's, at most the model's
            positions; 77 for CLIP).
    """

    def __init__(self, path: str | os.PathLike, max_length: int | None = None) -> None:
        super().__init__()
        try:
            from transformers import CLIPTextModel, CLIPTokenizer
        except ImportError:
            raise LdmonaiError("a CLIP text encoder needs transformers", path, 'pip install "ldmonai[sd]"') from None
        folder = Path(path)
        if not folder.is_dir():
            raise LdmonaiError("no such folder", path, "give the local folder of a CLIP text model or a Stable Diffusion model")
        try:
            self.tokenizer = CLIPTokenizer.from_pretrained(str(_component(folder, "tokenizer")), local_files_only=True)
            self.text_model = CLIPTextModel.from_pretrained(str(_component(folder, "text_encoder")), local_files_only=True)
        except (OSError, ValueError) as err:
            raise LdmonaiError(f"cannot load a CLIP text model and tokenizer ({first_line(err)})", path,
                               "give a folder saved by save_pretrained (config.json, weights, vocab.json, merges.txt)") from None
        # a tokenizer saved without model_max_length reports a huge sentinel; the positions bound it
        self.max_length = int(max_length or min(self.tokenizer.model_max_length,
                                                self.text_model.config.max_position_embeddings))
        self.num_base = len(self.tokenizer)
        self.learned_embedding = nn.Parameter(torch.zeros(0, self.dim))
        self._hook = None
        self._attach_hook()

    def _attach_hook(self) -> None:
        # resizing the vocabulary replaces the embedding module, and with it the hook
        if self._hook is not None:
            self._hook.remove()
        self._hook = self.text_model.get_input_embeddings().register_forward_hook(self._learned_rows)

    @property
    def dim(self) -> int:
        return int(self.text_model.config.hidden_size)

    @property
    def learned_tokens(self) -> list[str]:
        return self.tokenizer.convert_ids_to_tokens(list(range(self.num_base, len(self.tokenizer))))

    def _learned_rows(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        ids = inputs[0]
        learned = ids >= self.num_base
        if not bool(learned.any()):
            return output
        rows = F.embedding((ids - self.num_base).clamp_min(0), self.learned_embedding.to(output.dtype))
        return torch.where(learned[..., None], rows, output)

    def _token_id(self, word: str) -> int:
        ids = self.tokenizer(word, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise LdmonaiError(f"initializer {word!r} is {len(ids)} CLIP tokens, not one", None,
                               "pick a word that CLIP's tokenizer keeps whole (e.g. 'brain')")
        return ids[0]

    def add_tokens(self, words: Sequence[str], initializer: str | None = None) -> list[int]:
        """Add learned tokens; rows start from ``initializer``'s embedding or small random values."""
        vocab = self.tokenizer.get_vocab()
        new = [w for w in dict.fromkeys(words) if w not in vocab]
        if new:
            init_id = None if initializer is None else self._token_id(initializer)
            self._grow_learned_embedding(self.text_model.get_input_embeddings().weight, len(new), init_id)
            self.tokenizer.add_tokens(new)
            # the table only needs rows to index; their values are replaced by the hook
            self.text_model.resize_token_embeddings(len(self.tokenizer), mean_resizing=False)
            self._attach_hook()
        return [int(i) for i in self.tokenizer.convert_tokens_to_ids(list(words))]

    def forward(self, prompts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(prompts), padding="max_length", max_length=self.max_length, truncation=True,
                                return_tensors="pt")
        device = self.learned_embedding.device
        return self.text_model(tokens.input_ids.to(device)).last_hidden_state
