"""Strided convolution pyramids that change resolution by a power of two.

LDSeg's label encoder, label decoder and image encoder are the same idea in three roles:
a stack of stride-2 stages between a full-resolution map and a latent grid. One definition
keeps the three in step when the downsampling factor changes between presets.
"""

from __future__ import annotations

from typing import Sequence

import torch
from monai.networks.blocks import Convolution, ResidualUnit
from torch import nn


# torch's fused SiLU is MONAI's "SWISH" (x * sigmoid(x)) in one kernel instead of three: the
# same function to float rounding, and about a quarter off the label decoder's time. In place,
# because every activation here follows a norm whose output nothing else reads: the decoder's
# full-resolution stage then allocates three fewer 32-channel volumes (about 5 % of LDSeg's
# sampling time at 64^3), and the gradients are bit-identical. MONAI takes a constructor in an
# (act, args) pair.
ACT = (nn.SiLU, {"inplace": True})


def _norm(channels: int) -> tuple:
    # GroupNorm rather than batch or instance norm: batches are small in 3D, and at 1/16
    # of the input the latent maps can be 2x2, where instance norm erases the signal.
    groups = 8 if channels % 8 == 0 else 1
    return ("group", {"num_groups": groups})


def _stages(spatial_dims: int, first: int, channels: Sequence[int], num_res_units: int, transposed: bool) -> list[nn.Module]:
    """Stride-2 (or transposed stride-2) convolutions, each followed by residual units."""
    layers: list[nn.Module] = []
    prev = first
    for ch in channels:
        layers.append(
            Convolution(spatial_dims, prev, ch, strides=2, kernel_size=3, act=ACT, norm=_norm(ch), is_transposed=transposed)
        )
        layers += [ResidualUnit(spatial_dims, ch, ch, act=ACT, norm=_norm(ch)) for _ in range(num_res_units)]
        prev = ch
    return layers


class _Pyramid(nn.Module):
    def __init__(self, layers: list[nn.Module], factor: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(*layers)
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ConvDown(_Pyramid):
    """Map ``(B, in_channels, *S)`` to ``(B, out_channels, *S / 2**len(channels))``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: channels of the latent grid.
        channels: width of each stride-2 stage; its length sets the downsampling factor
            (4 stages: 1/16).
        num_res_units: residual units after each downsampling.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int] = (32, 64, 128, 256),
        num_res_units: int = 1,
    ) -> None:
        layers = _stages(spatial_dims, in_channels, channels, num_res_units, transposed=False)
        layers.append(Convolution(spatial_dims, channels[-1], out_channels, kernel_size=1, conv_only=True))
        super().__init__(layers, 2 ** len(channels))


class ConvUp(_Pyramid):
    """Map ``(B, in_channels, *s)`` to ``(B, out_channels, *s * 2**len(channels))``.

    ``channels`` lists the stages from coarse to fine, so ``ConvUp(..., channels[::-1])``
    mirrors a :class:`ConvDown`.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int] = (256, 128, 64, 32),
        num_res_units: int = 1,
    ) -> None:
        head = Convolution(spatial_dims, in_channels, channels[0], kernel_size=3, act=ACT, norm=_norm(channels[0]))
        layers = [head, *_stages(spatial_dims, channels[0], channels, num_res_units, transposed=True)]
        layers.append(Convolution(spatial_dims, channels[-1], out_channels, kernel_size=1, conv_only=True))
        super().__init__(layers, 2 ** len(channels))
        # the last upsampling, its residual units and the output projection
        self.full_resolution = len(layers) - num_res_units - 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers[: self.full_resolution](x)
        if x.device.type == "cpu" and not torch.is_grad_enabled():
            # oneDNN computes a transposed convolution channels-last and, for a channels-first
            # output, copies it back: at 64^3 that copy is a fresh 33 MB tensor that costs more
            # than the convolution. Run the whole full-resolution stage channels-last and
            # convert only the few-channel logits: the 3D label decoder's time fell by about a
            # quarter (in 2D, within noise). Inference only: training keeps the channels-first
            # numbers that the shipped weights were trained with (they differ by float rounding).
            x = x.contiguous(memory_format=torch.channels_last_3d if x.ndim == 5 else torch.channels_last)
            return self.layers[self.full_resolution :](x).contiguous()
        return self.layers[self.full_resolution :](x)
