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


def _default_latent_drift(module: "LatentDiffusion", state_dict, prefix: str, *args) -> None:
    """Weights written before the training δ was recorded load as δ = 0, with a note."""
    key = prefix + "latent_drift"
    if key not in state_dict and prefix + "scale_factor" in state_dict:
        import sys

        print("ldmonai: note: these LD weights record no latent drift; they load with δ = 0 (pass --delta for the "
              "δ they were trained with)", file=sys.stderr, flush=True)
        state_dict[key] = torch.zeros_like(module.latent_drift)


class LatentDiffusion(nn.Module):
    """Autoencoder + text encoder + conditional latent denoiser.

    Args:
        autoencoder: MONAI ``AutoencoderKL`` (frozen during LD fine-tuning), or a diffusers
            one behind :class:`~ldmonai.ld.diffusers_backend.DiffusersAutoencoder`.
        unet: ``DiffusionModelUNet`` with ``with_conditioning=True`` (or a diffusers UNet behind
            :class:`~ldmonai.ld.diffusers_backend.DiffusersUNet`); its
            ``cross_attention_dim`` equals the text encoder's width.
        text_encoder: ``encoder(prompts) -> (B, L, D)`` with ``add_tokens``.
        scale_factor: latent scaling (SD's 0.18215; set from the data's latent std).
        num_train_timesteps, schedule, beta_start, beta_end: the training scheduler (MONAI
            DDPM; the defaults are Stable Diffusion's); sampling uses DDIM on the same betas.
        text_dropout: probability that a training prompt is replaced by "" (SD uses 0.1),
            which teaches the unconditional branch of classifier-free guidance.

    Shapes: images ``(B, C, H, W)``; latents ``(B, C_z, H / f, W / f)``.

    The buffer ``latent_drift`` ``(C_z,)`` records the δ the weights were trained with, so that
    a checkpoint carries it and inference can default to it (:meth:`trained_delta`). Weights
    saved before it existed load with δ = 0 and a one-line note.
    """

    def __init__(self, autoencoder: AutoencoderKL, unet: DiffusionModelUNet, text_encoder: nn.Module,
                 scale_factor: float = 1.0, num_train_timesteps: int = 1000, schedule: str = "scaled_linear_beta",
                 text_dropout: float = 0.0, beta_start: float = 0.00085, beta_end: float = 0.012) -> None:
        super().__init__()
        if not 0 <= text_dropout < 1:
            raise LdmonaiError(f"text_dropout={text_dropout} is not a probability below 1", None, "use a value in [0, 1)")
        self.text_dropout = text_dropout
        self.autoencoder, self.unet, self.text_encoder = autoencoder, unet, text_encoder
        self.register_buffer("scale_factor", torch.tensor(float(scale_factor)))
        self.register_buffer("latent_drift", torch.zeros(self.latent_channels))
        self._register_load_state_dict_pre_hook(_default_latent_drift, with_module=True)
        self.schedule_args = {"num_train_timesteps": num_train_timesteps, "schedule": schedule,
                              "beta_start": beta_start, "beta_end": beta_end}

    # Schedulers are built on demand: they hold no weights and sampling changes their state.
    def train_scheduler(self, delta: float | Sequence[float] = 0.0) -> LatentDriftScheduler:
        return LatentDriftScheduler(DDPMScheduler(**self.schedule_args, clip_sample=False), delta)

    def sample_scheduler(self, delta: float | Sequence[float] = 0.0) -> LatentDriftScheduler:
        return LatentDriftScheduler(DDIMScheduler(**self.schedule_args, clip_sample=False), delta)

    @property
    def latent_channels(self) -> int:
        return self.unet.out_channels

    def trained_delta(self) -> float | list[float]:
        """The δ these weights were trained with: a float, or one value per latent channel."""
        values = [float(f"{float(v):.6g}") for v in self.latent_drift.cpu()]  # 0.05, not float32's 0.0500000007
        return values[0] if len(set(values)) == 1 else values

    @torch.no_grad()
    def record_delta(self, delta: float | Sequence[float]) -> float | list[float]:
        """Store the training δ in the ``latent_drift`` buffer (checked like the scheduler checks it)."""
        # through the wrapper, so that a δ it would refuse (range, channel count) is refused here too
        shift = LatentDriftScheduler(None, delta).shift_like(self.latent_drift.new_zeros(1, self.latent_channels, 1, 1))
        self.latent_drift.copy_(shift.reshape(-1).expand(self.latent_channels))
        return self.trained_delta()

    def _autoencoder_geometry(self) -> tuple[int, int]:
        """(image channels, downsampling factor) of the autoencoder, MONAI's or an adapter's."""
        ae = self.autoencoder
        if hasattr(ae, "downsample_factor"):
            return ae.in_channels, ae.downsample_factor
        return ae.encoder.in_channels, 2 ** (len(ae.encoder.channels) - 1)

    def check_images(self, images: torch.Tensor) -> None:
        expected, f = self._autoencoder_geometry()
        if images.ndim != 4 or images.shape[1] != expected:
            raise LdmonaiError(f"images of shape {tuple(images.shape)} do not fit the autoencoder, which takes "
                               f"(B, {expected}, H, W)", None, "convert the slices to the autoencoder's channels")
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

    def predict_noise(self, noisy: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                      sources: torch.Tensor | None = None) -> torch.Tensor:
        """ε_θ(z_t, t, text) ``(B, C_z, h, w)``; a text-to-image model takes no source latent."""
        if sources is not None:
            raise LdmonaiError("this text-to-image model takes no source image", None,
                               "use InstructPix2Pix (a UNet with twice the latent channels) for image-to-image training")
        return self.unet(noisy, timesteps=timesteps, context=context)

    def drop_conditions(self, prompts: list[str], sources: torch.Tensor | None, generator: torch.Generator | None):
        """Training-time condition dropout for classifier-free guidance: each prompt becomes ""
        with probability ``text_dropout`` (the unconditional branch that ``sample`` uses)."""
        if self.training and self.text_dropout > 0:
            keep = torch.rand(len(prompts), generator=generator) >= self.text_dropout
            prompts = [p if k else "" for p, k in zip(prompts, keep.tolist())]
        return prompts, sources

    def denoising_loss(self, latents: torch.Tensor, prompts: Sequence[str], delta: float | Sequence[float] = 0.0,
                       generator: torch.Generator | None = None, reduction: str = "mean",
                       sources: torch.Tensor | None = None) -> torch.Tensor:
        """MSE between ε and ε_θ(z_t − δ, t, text) with z_t from the drifted forward process (docs/ld.md).

        ``reduction="none"`` gives one loss per item, for losses that weight items (DreamBooth).
        ``sources``: ``(B, C_z, h, w)`` source latents, for image-to-image models.
        """
        sched = self.train_scheduler(delta)
        noise = torch.randn(latents.shape, generator=generator, device="cpu").to(latents)
        t = torch.randint(0, sched.num_train_timesteps, (latents.shape[0],), generator=generator).to(latents.device)
        noisy = sched.add_noise(latents, noise, t)
        prompts, sources = self.drop_conditions(list(prompts), sources, generator)
        pred = self.predict_noise(sched.model_input(noisy), t, self.text_encoder(prompts), sources)
        loss = F.mse_loss(pred, noise, reduction="none").flatten(1).mean(1)
        return loss.mean() if reduction == "mean" else loss

    def forward(self, images: torch.Tensor, prompts: Sequence[str], delta: float | Sequence[float] = 0.0,
                sources: torch.Tensor | None = None, weights: torch.Tensor | None = None) -> torch.Tensor:
        """The training loss for a batch of slices ``(B, C, H, W)`` and their prompts.

        Through ``forward`` so that a DistributedDataParallel wrapper sees the training pass;
        the latents are drawn from the (frozen) autoencoder's posterior. ``weights`` ``(B,)``
        weight the items (DreamBooth's class-prior items); the loss is their weighted sum / B.
        """
        sources = None if sources is None else self.encode(sources)
        latents = self.encode(images, sample=True)
        if weights is None:
            return self.denoising_loss(latents, prompts, delta, sources=sources)
        per_item = self.denoising_loss(latents, prompts, delta, reduction="none", sources=sources)
        return (per_item * weights.to(per_item)).mean()

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
