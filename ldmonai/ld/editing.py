"""Pix2Pix-Zero-style counterfactual editing: invert the source, move the text context, resample.

1. DDIM inversion (:func:`ldmonai.diffusion.invert`) of the source latent under its prompt
   gives the z_T from which the model regenerates the source.
2. The edit direction is the difference of the mean text embeddings of two sentence sets
   (for example AD against CN descriptions): no paired images are needed.
3. Sampling from the inverted z_T with the prompt's context plus the direction gives the
   counterfactual. The latent drift δ applies to inversion and sampling alike.

Not implemented yet: the cross-attention guidance (weight τ) that Pix2Pix-Zero uses to keep
the source's cross-attention maps while editing.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ldmonai.diffusion.sampling import denoise, invert
from ldmonai.errors import LdmonaiError
from ldmonai.ld.model import LatentDiffusion

__all__ = ["Pix2PixZero", "edit_direction"]


@torch.no_grad()
def edit_direction(text_encoder, source_sentences: Sequence[str], target_sentences: Sequence[str]) -> torch.Tensor:
    """``(L, D)``: mean context of ``target_sentences`` minus that of ``source_sentences``."""
    if not source_sentences or not target_sentences:
        raise LdmonaiError("an edit direction needs sentences on both sides", None, "give at least one source and one target sentence")
    return text_encoder(list(target_sentences)).mean(0) - text_encoder(list(source_sentences)).mean(0)


class Pix2PixZero:
    """Invert-then-edit with a text direction, on a :class:`LatentDiffusion`.

    Args:
        model: the (fine-tuned) latent diffusion model.
        num_inference_steps: DDIM steps of inversion and of editing (the same schedule).
        delta: latent drift δ for both.
    """

    def __init__(self, model: LatentDiffusion, num_inference_steps: int = 50, delta: float | Sequence[float] = 0.0) -> None:
        self.model, self.num_inference_steps, self.delta = model, num_inference_steps, delta

    def _model_fn(self, context: torch.Tensor):
        return lambda x, t: self.model.unet(x, timesteps=t, context=context)

    @torch.no_grad()
    def invert(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """``(B, C_z, h, w)`` z_T of the source ``images`` ``(B, C, H, W)`` under their prompts."""
        latents = self.model.encode(images)
        context = self.model.text_encoder(list(prompts))
        return invert(self.model.sample_scheduler(self.delta), self._model_fn(context), latents, self.num_inference_steps)

    @torch.no_grad()
    def edit(self, inverted: torch.Tensor, prompts: Sequence[str], direction: torch.Tensor | None = None,
             strength: float = 1.0) -> torch.Tensor:
        """Images from ``inverted`` with the prompts' context moved by ``strength * direction``."""
        context = self.model.text_encoder(list(prompts))
        if direction is not None:
            context = context + strength * direction.to(context)
        z = denoise(self.model.sample_scheduler(self.delta), self._model_fn(context), inverted.clone(), self.num_inference_steps)
        return self.model.decode(z)
