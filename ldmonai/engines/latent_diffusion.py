"""The training iterations of LD: the autoencoder (pretraining stage 1) and the latent denoiser.

Batches hold ``image`` (``(B, C, H, W)`` slices) and, for the denoiser, ``prompt`` (one string
per slice). Terms go to the engine output for TensorBoard, as in the other families.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys

from ldmonai.engines.generation import finish_iteration

__all__ = ["AutoencoderTrainStep", "LatentDiffusionTrainStep"]


def _images(engine: Any, batchdata: dict, key: str = Keys.IMAGE) -> torch.Tensor | None:
    """The batch's ``key`` on the engine's device, or None when the batch has no such key."""
    if key not in batchdata:
        return None
    return torch.as_tensor(batchdata[key]).to(engine.state.device, non_blocking=engine.non_blocking)


class AutoencoderTrainStep:
    """``iteration_update`` for MONAI's ``AutoencoderKL``: L1 reconstruction + ``kl_weight`` * KL.

    The perceptual and adversarial terms of the full LDM recipe are left out: at the tiny
    sizes this stage runs at they cost more than they give (stated in the LD docs).
    """

    def __init__(self, kl_weight: float = 1e-6) -> None:
        self.kl_weight = kl_weight

    def __call__(self, engine: Any, batchdata: dict) -> dict:
        images = _images(engine, batchdata)
        engine.state.output = {Keys.IMAGE: images}
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        recon, mu, sigma = engine.network(images)
        l1 = F.l1_loss(recon, images)
        kl = 0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2) + 1e-12) - 1).flatten(1).sum(1).mean()
        loss = l1 + self.kl_weight * kl
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        loss.backward()
        engine.state.output[Keys.PRED] = recon.detach()
        return finish_iteration(engine, {"loss": loss, "l1": l1, "kl": kl})


class LatentDiffusionTrainStep:
    """``iteration_update`` for :class:`~ldmonai.ld.model.LatentDiffusion` with latent drift ``delta``
    (0 turns LD off); the model's ``forward`` returns the denoising loss. A batch ``source``
    (InstructPix2Pix pairs) is passed on as the source images; a batch ``prior`` flag marks
    DreamBooth's class images, whose loss is weighted by ``prior_weight``."""

    def __init__(self, delta: float | Sequence[float] = 0.0, prior_weight: float = 1.0) -> None:
        self.delta, self.prior_weight = delta, prior_weight

    def __call__(self, engine: Any, batchdata: dict) -> dict:
        images = _images(engine, batchdata)
        prompts = list(batchdata["prompt"])
        engine.state.output = {Keys.IMAGE: images}
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        prior = _images(engine, batchdata, "prior")
        weights = None if prior is None else torch.where(prior.bool(), self.prior_weight, 1.0).to(images.dtype)
        loss = engine.network(images, prompts, self.delta, _images(engine, batchdata, "source"), weights)
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        loss.backward()
        return finish_iteration(engine, {"loss": loss})
