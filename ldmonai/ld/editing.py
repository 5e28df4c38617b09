"""Pix2Pix-Zero-style counterfactual editing: invert the source, move the text context, resample.

1. DDIM inversion (:func:`ldmonai.diffusion.invert`) of the source latent under its prompt
   gives the z_T from which the model regenerates the source.
2. The edit direction is the difference of the mean text embeddings of two sentence sets
   (for example AD against CN descriptions): no paired images are needed.
3. A reconstruction pass from z_T under the unedited context records the cross-attention
   maps of every step: where each word "looks" in the source's layout.
4. The edit pass samples from the same z_T with the context plus the direction. Before each
   step, cross-attention guidance moves z_t down the gradient of the distance between its
   maps under the edited context and the recorded ones (weight τ,
   :func:`~ldmonai.ld.cross_attention.attention_distance`), so the structure of the source is
   kept while the content follows the text. τ = 0 turns guidance off.

The latent drift δ applies to inversion, reconstruction and editing alike.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ldmonai.diffusion.sampling import denoise, invert
from ldmonai.errors import LdmonaiError
from ldmonai.ld.cross_attention import CrossAttentionMaps, attention_distance
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
        guidance: τ, the step size of the cross-attention guidance (Pix2Pix-Zero uses 0.1);
            0 edits without it.

    After :meth:`edit`, ``attention_error`` holds the edit pass's map distance per step
    (before that step's correction), the quantity the guidance lowers.
    """

    def __init__(self, model: LatentDiffusion, num_inference_steps: int = 50, delta: float | Sequence[float] = 0.0,
                 guidance: float = 0.1) -> None:
        if guidance < 0:
            raise LdmonaiError(f"cross-attention guidance τ={guidance} is negative", None, "use τ >= 0 (0 turns it off)")
        self.model, self.num_inference_steps, self.delta, self.guidance = model, num_inference_steps, delta, guidance
        self.attention_error: list[float] = []

    def _model_fn(self, context: torch.Tensor):
        return lambda x, t: self.model.unet(x, timesteps=t, context=context)

    @torch.no_grad()
    def invert(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """``(B, C_z, h, w)`` z_T of the source ``images`` ``(B, C, H, W)`` under their prompts."""
        latents = self.model.encode(images)
        context = self.model.text_encoder(list(prompts))
        return invert(self.model.sample_scheduler(self.delta), self._model_fn(context), latents, self.num_inference_steps)

    @torch.no_grad()
    def reference_maps(self, inverted: torch.Tensor, context: torch.Tensor) -> dict[int, dict[str, torch.Tensor]]:
        """Cross-attention maps of each step of the unedited reconstruction, by timestep."""
        recorder, maps = CrossAttentionMaps(self.model.unet), {}

        def record(x, t):
            with recorder:
                out = self.model.unet(x, timesteps=t, context=context)
            maps[int(t[0])] = recorder.maps
            return out

        denoise(self.model.sample_scheduler(self.delta), record, inverted.clone(), self.num_inference_steps)
        return maps

    def _guide(self, context: torch.Tensor, reference: dict[int, dict[str, torch.Tensor]]):
        recorder = CrossAttentionMaps(self.model.unet)

        def guide(x, t):
            steer = self.guidance > 0  # τ = 0 only measures: no graph to build
            with torch.set_grad_enabled(steer):
                x_in = x.detach().requires_grad_(steer)
                with recorder:
                    self.model.unet(x_in, timesteps=t, context=context)
                loss = attention_distance(recorder.maps, reference[int(t[0])])
                self.attention_error.append(float(loss.detach()))
                if not steer:
                    return x
                (grad,) = torch.autograd.grad(loss, x_in)
            return x - self.guidance * grad

        return guide

    @torch.no_grad()
    def edit(self, inverted: torch.Tensor, prompts: Sequence[str], direction: torch.Tensor | None = None,
             strength: float = 1.0, track_attention: bool = False) -> torch.Tensor:
        """Images from ``inverted`` with the prompts' context moved by ``strength * direction``.

        Cross-attention guidance runs when τ > 0 and there is a direction (an empty edit
        needs none); ``track_attention`` records the map distance with τ = 0 too.
        """
        source = self.model.text_encoder(list(prompts))
        context = source if direction is None else source + strength * direction.to(source)
        self.attention_error = []
        guide = None
        if (self.guidance > 0 and direction is not None) or track_attention:
            if not CrossAttentionMaps(self.model.unet):
                raise LdmonaiError("the UNet has no cross-attention to guide", None,
                                   "build it with with_conditioning=True, or use guidance=0")
            guide = self._guide(context, self.reference_maps(inverted, source))
        z = denoise(self.model.sample_scheduler(self.delta), self._model_fn(context), inverted.clone(),
                    self.num_inference_steps, guide=guide)
        return self.model.decode(z)
