"""LDSeg: conditional latent diffusion for segmentation (Zaman et al., 2024).

"Latent Diffusion for Medical Image Segmentation: End to end learning for fast sampling
and accuracy." The label map, not the image, is diffused: a label autoencoder gives a
small latent, a denoiser conditioned on an image embedding learns to recover it from
noise, and all three parts train together under one segmentation-plus-noise objective.
"""

from __future__ import annotations

from typing import Sequence

import torch
from monai.networks.nets import DiffusionModelUNet
from monai.networks.utils import one_hot

from ldmonai.diffusion import predict_original
from ldmonai.ldseg.image_encoder import ImageEncoder
from ldmonai.ldseg.label_autoencoder import LabelAutoencoder, standardise
from ldmonai.ldseg.segmenter import DiffusionSegmenter


#: What the label decoder reads in training (see :class:`LDSeg`).
DECODE_FROM = ("residual", "x0")
#: What the denoiser predicts (see :class:`LDSeg`).
PREDICTION_TYPES = ("sample", "epsilon")


def check_divisible(image: torch.Tensor, factor: int, what: str) -> None:
    """Refuse spatial sizes the pyramid cannot halve ``log2(factor)`` times, with the fix."""
    spatial = tuple(image.shape[2:])
    if any(s % factor for s in spatial):
        raise ValueError(
            f"{what} needs every spatial size divisible by {factor}, got {spatial}; "
            f"crop or pad the input (or use a sliding-window roi_size that is a multiple of {factor})"
        )


class LDSeg(DiffusionSegmenter):
    """Label autoencoder + image encoder + latent denoiser, trained end to end.

    Training (``training_outputs``), with ``prediction_type="sample"`` (the default)::

        z0     = standardise(E_label(onehot(y)))            # LabelAutoencoder.encode
        z_t    = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps      # DiffusionSegmenter.noised, one t per item
        z0_hat = D([z_t, E_image(x)], t)                     # the denoiser predicts z0
        logits = E_label^-1(z0_hat)                          # LabelAutoencoder.decode

    and :class:`~ldmonai.ldseg.loss.SegmentationLoss` adds ``CE + 2 (1 - Dice)`` on the logits to
    ``lambda MSE(z0_hat, z0)``, so the segmentation terms reach the label encoder through the
    denoised latent. With ``prediction_type="epsilon"`` the denoiser predicts ``eps`` and the decoder
    reads ``z_t - eps_hat`` (the reference's) or the clamped x0 estimate (``decode_from``).

    Sampling (``sample``): N latents from independent (standardised) noise for each image,
    denoised with DDIM (10 to 15 steps) or DDPM, the latent standardised again before every step,
    all N in one batched pass, then decoded.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        num_classes: label classes including background.
        latent_channels: channels of the label latent.
        embed_channels: channels of the image embedding.
        encoder_channels: stage widths of both encoders; ``2**len`` is the downsampling
            factor (4 stages: 1/16 as published).
        num_res_units: residual units per encoder stage.
        denoiser_channels: MONAI ``DiffusionModelUNet`` widths.
        denoiser_attention: attention per denoiser level.
        denoiser_res_blocks: residual blocks per denoiser level.
        norm_num_groups: group norm groups in the denoiser.
        num_head_channels: channels per attention head in the denoiser, one value or one per
            level (equal to the width: single-head attention, as published).
        num_train_timesteps: T of the forward process.
        schedule: MONAI noise schedule name (``cosine`` as published).
        sampler: ``ddim`` or ``ddpm``.
        num_inference_steps: reverse steps at sampling time.
        num_samples: samples averaged by ``forward``.
        latent_norm: ``standardise`` (the reference's) or ``tanh``; see
            :class:`~ldmonai.ldseg.label_autoencoder.LabelAutoencoder`.
        prediction_type: what the denoiser predicts. ``sample`` (ours): ``z0`` itself; the
            decoder reads it and the denoising MSE compares it with ``z0``. ``epsilon`` (the
            reference's): the noise; the decoder then reads ``decode_from``.
        decode_from: with ``epsilon``, what the label decoder reads in training.
            ``residual`` (the reference's): ``z_t - eps_hat``. ``x0``: the clamped DDIM
            estimate ``(z_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t)``.
        ema_decay: decay of the denoiser's weight average used for sampling (0.999 as
            published); None samples with the trained weights.

    The defaults are the published sizes (the authors' reference code), as in the bundle's
    ``configs/paper.json``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        latent_channels: int = 1,
        embed_channels: int = 1,
        encoder_channels: Sequence[int] = (32, 64, 64, 32),
        num_res_units: int = 1,
        denoiser_channels: Sequence[int] = (16, 32, 64),
        denoiser_attention: Sequence[bool] = (False, True, True),
        denoiser_res_blocks: int = 2,
        norm_num_groups: int = 4,
        num_head_channels: int | Sequence[int] = (16, 32, 64),
        num_train_timesteps: int = 1000,
        schedule: str = "cosine",
        sampler: str = "ddim",
        num_inference_steps: int = 10,
        num_samples: int = 1,
        latent_norm: str = "standardise",
        prediction_type: str = "sample",
        decode_from: str = "residual",
        ema_decay: float | None = 0.999,
    ) -> None:
        super().__init__()
        if decode_from not in DECODE_FROM:
            raise ValueError(f"decode_from must be one of {DECODE_FROM}, got {decode_from!r}")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        self.decode_from = decode_from
        self.num_classes = num_classes
        self.num_samples = num_samples
        self.latent_channels = latent_channels
        self.label_autoencoder = LabelAutoencoder(
            spatial_dims, num_classes, latent_channels, encoder_channels, num_res_units, latent_norm
        )
        self.image_encoder = ImageEncoder(spatial_dims, in_channels, embed_channels, encoder_channels, num_res_units)
        self.denoiser = DiffusionModelUNet(
            spatial_dims=spatial_dims,
            in_channels=latent_channels + embed_channels,
            out_channels=latent_channels,
            channels=tuple(denoiser_channels),
            attention_levels=tuple(denoiser_attention),
            num_res_blocks=denoiser_res_blocks,
            norm_num_groups=norm_num_groups,
            num_head_channels=num_head_channels,
        )
        # The label latent is 1/latent_factor of the input, and the denoiser halves that grid once
        # per extra level: inputs must divide by both, or MONAI fails deep inside the denoiser.
        self.latent_factor = self.label_autoencoder.factor
        self.factor = self.latent_factor * 2 ** (len(tuple(denoiser_channels)) - 1)
        self.set_schedule(
            num_train_timesteps, schedule, sampler, num_inference_steps,
            clip_sample=latent_norm == "tanh", prediction_type=prediction_type,
        )
        self.enable_ema(ema_decay)

    def training_outputs(self, image: torch.Tensor, label: torch.Tensor) -> dict[str, torch.Tensor]:
        """One end-to-end training pass.

        Args:
            image: ``(B, in_channels, *S)``.
            label: ``(B, 1, *S)`` integer class ids.

        Returns:
            ``logits`` ``(B, C, *S)`` decoded from the denoised latent; ``noise`` (the denoising
            target: ``z0`` or ``eps``, per ``prediction_type``) and ``noise_pred`` (the denoiser's
            output), ``(B, L, *S/f)`` each.
        """
        check_divisible(image, self.factor, "LDSeg")
        z0 = self.label_autoencoder.encode(one_hot(label.long(), self.num_classes))
        embedding = self.image_encoder(image)
        noise, t, z_t = self.noised(z0)
        output = self.conditioned(embedding)(z_t, t)
        if self.prediction_type == "sample":
            # The segmentation loss and the denoising MSE then ask the same of the denoiser
            # (z0_hat close to z0); with epsilon they pull apart and the MSE stays at 1
            # (docs/benchmarks.md, LDSeg ablation).
            return {"logits": self.label_autoencoder.decode(output), "noise": z0, "noise_pred": output}
        noise_pred = output
        if self.decode_from == "residual":
            # The segmentation loss reaches eps_hat with gain 1 at every t. Through the x0
            # estimate the gain is sqrt(1 - abar_t) / sqrt(abar_t), about 600 at t = 999, and
            # that term, not the noise MSE, decides what the denoiser learns.
            z_hat = z_t - noise_pred
        else:
            # Clamped like DDIM's x0 clipping: at large t the x0 estimate divides by ~0.
            z_hat = predict_original(self.scheduler, z_t, noise_pred, t).clamp(-1.0, 1.0)
        return {"logits": self.label_autoencoder.decode(z_hat), "noise": noise, "noise_pred": noise_pred}

    @torch.no_grad()
    def sample(self, image: torch.Tensor, num_samples: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(N, B, C, *S)`` class probabilities from N independent latent samples per image.

        Args:
            image: ``(B, in_channels, *S)``.
            num_samples: N; all N run in one batched pass of size ``N * B``.
            generator: random source for the starting noise (reproducible samples).
        """
        check_divisible(image, self.factor, "LDSeg")
        b = image.shape[0]
        embedding = self.image_encoder(image).repeat(num_samples, *([1] * (image.ndim - 1)))
        renormalise = standardise if self.label_autoencoder.latent_norm == "standardise" else None
        z = self.reverse(embedding, self.latent_channels, generator, renormalise)
        probs = torch.softmax(self.label_autoencoder.decode(z), dim=1)
        return probs.reshape(num_samples, b, *probs.shape[1:])
