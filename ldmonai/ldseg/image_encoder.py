"""LDSeg's image encoder: the image to an embedding on the label latent's grid.

The embedding conditions the denoiser by channel concatenation, so it must have exactly
the latent's spatial size; sharing the pyramid definition with the label encoder makes
that hold for any preset.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ldmonai.networks import ConvDown


class ImageEncoder(nn.Module):
    """``(B, in_channels, *S)`` to ``(B, embed_channels, *S/f)`` with ``f = 2**len(channels)``."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        embed_channels: int = 16,
        channels: Sequence[int] = (32, 64, 128, 256),
        num_res_units: int = 1,
    ) -> None:
        super().__init__()
        self.encoder = ConvDown(spatial_dims, in_channels, embed_channels, channels, num_res_units)
        self.factor = self.encoder.factor

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.encoder(image)
