"""LDSeg's label autoencoder: one-hot label maps to a compact latent and back.

Zaman et al. encode the label rather than the image into the diffusion space: a few
channels at 1/16 of the input size, so the denoiser works on a tiny grid and sampling
costs a fraction of pixel-space diffusion.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ldmonai.networks import ConvDown, ConvUp


#: Ways of bringing the label latent to the prior's scale (see :class:`LabelAutoencoder`).
LATENT_NORMS = ("standardise", "tanh")


def standardise(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Each item of ``(B, C, *s)`` to zero mean and unit variance over all its channels and voxels.

    Without it the jointly trained encoder is free to scale its latent up until the added
    noise no longer hides it, and the denoiser has nothing left to learn; sampling applies
    the same map after every reverse step so that the decoder always sees this scale.
    """
    dims = tuple(range(1, z.ndim))
    mean = z.mean(dims, keepdim=True)
    std = z.std(dims, keepdim=True, unbiased=False)
    return (z - mean) / (std + eps)


class LabelAutoencoder(nn.Module):
    """Encode ``(B, num_classes, *S)`` one-hot labels to ``(B, latent_channels, *S/f)``, decode to logits.

    Args:
        spatial_dims: 2 or 3.
        num_classes: classes including background.
        latent_channels: channels of the label latent.
        channels: stage widths of the encoder, fine to coarse; ``f = 2**len(channels)``.
        num_res_units: residual units per stage.
        latent_norm: how the encoder output is brought to the diffusion prior's scale.
            ``standardise`` (the reference's): each latent to zero mean and unit variance,
            ``z0 = (h - mean(h)) / std(h)`` over all its channels and voxels, the scale of
            the N(0, I) noise it is mixed with. ``tanh``: squashed into [-1, 1] (this
            project's first version; measured in ``docs/benchmarks.md``, LDSeg ablation).
    """

    def __init__(
        self,
        spatial_dims: int,
        num_classes: int,
        latent_channels: int = 4,
        channels: Sequence[int] = (32, 64, 128, 256),
        num_res_units: int = 1,
        latent_norm: str = "standardise",
    ) -> None:
        super().__init__()
        if latent_norm not in LATENT_NORMS:
            raise ValueError(f"latent_norm must be one of {LATENT_NORMS}, got {latent_norm!r}")
        self.latent_norm = latent_norm
        self.encoder = ConvDown(spatial_dims, num_classes, latent_channels, channels, num_res_units)
        self.decoder = ConvUp(spatial_dims, latent_channels, num_classes, tuple(channels)[::-1], num_res_units)
        self.factor = self.encoder.factor

    def encode(self, onehot: torch.Tensor) -> torch.Tensor:
        h = self.encoder(onehot)
        return torch.tanh(h) if self.latent_norm == "tanh" else standardise(h)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return self.decoder(latent)

    def forward(self, onehot: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(onehot))
