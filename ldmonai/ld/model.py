"""The text-to-image latent diffusion model that LD fine-tunes and samples (MONAI core backend).

MONAI's ``AutoencoderKL`` maps slices to latents, a ``DiffusionModelUNet`` with
cross-attention denoises them under a text context, and the latent drift enters only
through :class:`~ldmonai.diffusion.latent_drift.LatentDriftScheduler` around the scheduler.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets import AutoencoderKL, DiffusionModelUNet
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler
from torch import nn

from ldmonai.diffusion.latent_drift import LatentDriftScheduler
from ldmonai.diffusion.sampling import denoise
from ldmonai.errors import LdmonaiError

__all__ = ["LatentDiffusion"]


class LatentDiffusion(nn.Module):
    """Autoencoder + text encoder + conditional latent denoiser.

    Args:
        autoencoder: ``AutoencoderKL`` (frozen during LD fine-tuning).
        unet: ``DiffusionModelUNet`` with ``with_conditioning=True``; its
            ``cross_attention_dim`` equals the text encoder's width.
        text_encoder: ``encoder(prompts) -> (B, L, D)`` with ``add_tokens``.
        scale_factor: latent scaling (SD's 0.18215; set from the data's latent std).
        num_train_timesteps, schedule: the training scheduler (MONAI DDPM); sampling
            uses DDIM on the same betas.

    Shapes: images ``(B, C, H, W)``; latents ``(B, C_z, H / f, W / f)``.
    """

    def __init__(self, autoencoder: AutoencoderKL, unet: DiffusionModelUNet, text_encoder: nn.Module,
                 scale_factor: float = 1.0, num_train_timesteps: int = 1000, schedule: str = "scaled_linear_beta") -> None:
        super().__init__()
        self.autoencoder, self.unet, self.text_encoder = autoencoder, unet, text_encoder
        self.register_buffer("scale_factor", torch.tensor(float(scale_factor)))
        self.schedule_args = {"num_train_timesteps": num_train_timesteps, "schedule": schedule,
                              "beta_start": 0.00085, "beta_end": 0.012}

    # Schedulers are built on demand: they hold no weights and sampling changes their state.
    def train_scheduler(self, delta: float | Sequence[float] = 0.0) -> LatentDriftScheduler:
        return LatentDriftScheduler(DDPMScheduler(**self.schedule_args, clip_sample=False), delta)

    def sample_scheduler(self, delta: float | Sequence[float] = 0.0) -> LatentDriftScheduler:
        return LatentDriftScheduler(DDIMScheduler(**self.schedule_args, clip_sample=False), delta)

    @property
    def latent_channels(self) -> int:
        return self.unet.in_channels

    def check_images(self, images: torch.Tensor) -> None:
        expected = self.autoencoder.encoder.in_channels
        if images.ndim != 4 or images.shape[1] != expected:
            raise LdmonaiError(f"images of shape {tuple(images.shape)} do not fit the autoencoder, which takes "
                               f"(B, {expected}, H, W)", None, "convert the slices to the autoencoder's channels")
        f = 2 ** (len(self.autoencoder.encoder.channels) - 1)
        if images.shape[2] % f or images.shape[3] % f:
            raise LdmonaiError(f"slice size {tuple(images.shape[2:])} is not a multiple of {f}, the autoencoder's "
                               "downsampling", None, f"resize or pad the slices to a multiple of {f}")
        if not torch.isfinite(images).all():
            raise LdmonaiError("images contain NaN or infinity", None, "check the slices")

    @torch.no_grad()
    def encode(self, images: torch.Tensor, sample: bool = False) -> torch.Tensor:
        """Scaled latents: the posterior mean, or a draw from it with ``sample=True`` (training)."""
        self.check_images(images)
        if sample:
            return self.autoencoder.encode_stage_2_inputs(images) * self.scale_factor
        z_mu, _ = self.autoencoder.encode(images)
        return z_mu * self.scale_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode_stage_2_outputs(latents / self.scale_factor)

    def denoising_loss(self, latents: torch.Tensor, prompts: Sequence[str], delta: float | Sequence[float] = 0.0,
                       generator: torch.Generator | None = None, reduction: str = "mean") -> torch.Tensor:
        """MSE between ε and ε_θ(z_t, t, text) with z_t from the drifted forward process.

        ``reduction="none"`` gives one loss per item, for losses that weight items (DreamBooth).
        """
        sched = self.train_scheduler(delta)
        noise = torch.randn(latents.shape, generator=generator, device="cpu").to(latents)
        t = torch.randint(0, sched.num_train_timesteps, (latents.shape[0],), generator=generator).to(latents.device)
        noisy = sched.add_noise(latents, noise, t)
        pred = self.unet(noisy, timesteps=t, context=self.text_encoder(list(prompts)))
        loss = F.mse_loss(pred, noise, reduction="none").flatten(1).mean(1)
        return loss.mean() if reduction == "mean" else loss

    def forward(self, images: torch.Tensor, prompts: Sequence[str], delta: float | Sequence[float] = 0.0) -> torch.Tensor:
        """The training loss for a batch of slices ``(B, C, H, W)`` and their prompts.

        Through ``forward`` so that a DistributedDataParallel wrapper sees the training pass;
        the latents are drawn from the (frozen) autoencoder's posterior.
        """
        return self.denoising_loss(self.encode(images, sample=True), prompts, delta)

    @torch.no_grad()
    def sample(self, prompts: Sequence[str], latent_size: Sequence[int], delta: float | Sequence[float] = 0.0,
               num_inference_steps: int = 50, guidance_scale: float = 1.0, generator: torch.Generator | None = None,
               start: torch.Tensor | None = None, progress: bool = False) -> torch.Tensor:
        """Slices for ``prompts`` with drift δ; ``start`` overrides z_T (DDIM inversion, fixed noise).

        Classifier-free guidance with ``guidance_scale > 1`` uses the empty prompt as the
        unconditional branch.
        """
        device = self.scale_factor.device
        sched = self.sample_scheduler(delta)
        shape = (len(prompts), self.latent_channels, *latent_size)
        z = start.to(device) if start is not None else sched.prior(shape, generator=generator).to(device)
        context = self.text_encoder(list(prompts))
        empty = self.text_encoder([""] * len(prompts)) if guidance_scale != 1.0 else None

        def model_fn(x, t):
            if empty is None:
                return self.unet(x, timesteps=t, context=context)
            both = self.unet(torch.cat([x, x]), timesteps=torch.cat([t, t]), context=torch.cat([empty, context]))
            uncond, cond = both.chunk(2)
            return uncond + guidance_scale * (cond - uncond)

        z = denoise(sched, model_fn, z, num_inference_steps, progress=progress)
        return self.decode(z)
