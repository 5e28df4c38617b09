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


class LabelAutoencoder(nn.Module):
    """Encode ``(B, num_classes, *S)`` one-hot labels to ``(B, latent_channels, *S/f)``, decode to logits.

    Args:
        spatial_dims: 2 or 3.
        num_classes: classes including background.
        latent_channels: channels of the label latent.
        channels: stage widths of the encoder, fine to coarse; ``f = 2**len(channels)``.
        num_res_units: residual units per stage.
    """

    def __init__(
        self,
        spatial_dims: int,
        num_classes: int,
        latent_channels: int = 4,
        channels: Sequence[int] = (32, 64, 128, 256),
        num_res_units: int = 1,
    ) -> None:
        super().__init__()
        self.encoder = ConvDown(spatial_dims, num_classes, latent_channels, channels, num_res_units)
        self.decoder = ConvUp(spatial_dims, latent_channels, num_classes, tuple(channels)[::-1], num_res_units)
        self.factor = self.encoder.factor

    def encode(self, onehot: torch.Tensor) -> torch.Tensor:
        # tanh keeps the latent in [-1, 1], the range the noise schedule and DDIM's x0
        # clipping assume, whatever scale the encoder would drift to otherwise.
        return torch.tanh(self.encoder(onehot))

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return self.decoder(latent)

    def forward(self, onehot: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(onehot))
