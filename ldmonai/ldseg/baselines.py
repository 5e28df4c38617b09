"""The two baselines LDSeg is compared with, behind the same :class:`Segmenter` interface.

- :class:`DeterministicSegmenter`: any MONAI segmentation network (``UNet``, ``SegResNet``)
  trained with the same CE + Dice terms; one forward pass.
- :class:`PixelDiffusionSegmenter`: diffusion on the full-resolution one-hot mask,
  conditioned on the image by concatenation, as in MONAI's DDPM segmentation tutorial.
  It is what LDSeg's latent space is meant to beat on sampling time.
"""

from __future__ import annotations

from typing import Sequence

import torch
from monai.networks.nets import DiffusionModelUNet
from monai.networks.utils import one_hot
from torch import nn

from ldmonai.ldseg.segmenter import DiffusionSegmenter, Segmenter


class DeterministicSegmenter(Segmenter):
    """Wrap a plain segmentation network ``(B, in, *S) -> (B, C, *S)`` logits."""

    def __init__(self, network: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.network = network
        self.num_classes = num_classes

    def training_outputs(self, image: torch.Tensor, label: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.network(image)}

    def sample(self, image: torch.Tensor, num_samples: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        # Deterministic: every "sample" is the same, so one pass serves all N.
        probs = torch.softmax(self.network(image), dim=1)
        return probs.unsqueeze(0).expand(num_samples, *probs.shape)


class PixelDiffusionSegmenter(DiffusionSegmenter):
    """Denoise the one-hot mask (scaled to [-1, 1]) at full resolution.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        num_classes: label classes including background.
        channels, attention_levels, num_res_blocks, norm_num_groups, num_head_channels:
            the MONAI ``DiffusionModelUNet``.
        num_train_timesteps, schedule: the forward process.
        sampler, num_inference_steps: reverse process (DDPM 1000 or DDIM 50 in the benchmark).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        channels: Sequence[int] = (64, 128, 256, 256),
        attention_levels: Sequence[bool] = (False, False, False, True),
        num_res_blocks: int = 2,
        norm_num_groups: int = 32,
        num_head_channels: int = 32,
        num_train_timesteps: int = 1000,
        schedule: str = "cosine",
        sampler: str = "ddpm",
        num_inference_steps: int = 1000,
        num_samples: int = 1,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_samples = num_samples
        self.denoiser = DiffusionModelUNet(
            spatial_dims=spatial_dims,
            in_channels=num_classes + in_channels,
            out_channels=num_classes,
            channels=tuple(channels),
            attention_levels=tuple(attention_levels),
            num_res_blocks=num_res_blocks,
            norm_num_groups=norm_num_groups,
            num_head_channels=num_head_channels,
        )
        self.set_schedule(num_train_timesteps, schedule, sampler, num_inference_steps)
        self.enable_ema(None)  # the MONAI tutorial design it stands for samples with the trained weights

    def training_outputs(self, image: torch.Tensor, label: torch.Tensor) -> dict[str, torch.Tensor]:
        x0 = one_hot(label.long(), self.num_classes) * 2.0 - 1.0
        noise, t, x_t = self.noised(x0)
        noise_pred = self.conditioned(image)(x_t, t)
        return {"noise": noise, "noise_pred": noise_pred}

    @torch.no_grad()
    def sample(self, image: torch.Tensor, num_samples: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        b = image.shape[0]
        cond = image.repeat(num_samples, *([1] * (image.ndim - 1)))
        x = self.reverse(cond, self.num_classes, generator)
        # The denoised mask is a soft one-hot in [-1, 1]; renormalise it to probabilities.
        scores = ((x + 1.0) / 2.0).clamp(0.0, 1.0) + 1e-6
        probs = scores / scores.sum(1, keepdim=True)
        return probs.reshape(num_samples, b, *probs.shape[1:])
