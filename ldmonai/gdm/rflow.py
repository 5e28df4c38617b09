"""The multi-step baseline of GDM: conditional rectified flow with MONAI's ``RFlowScheduler``.

A ``DiffusionModelUNet`` sees the noisy CT and the condition (MR or FBP) concatenated on the
channel axis and predicts the velocity ``x0 - noise``; sampling integrates it from noise
with Euler steps through :func:`ldmonai.diffusion.sampling.denoise`. It is the
"many NFE" reference that GDM's one step is measured against.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import RFlowScheduler
from torch import nn

from ldmonai.diffusion.sampling import denoise

__all__ = ["RFlowTranslator"]


class RFlowTranslator(nn.Module):
    """Condition-to-image translation by rectified flow.

    Args:
        spatial_dims: 2 or 3.
        in_channels: condition channels.
        out_channels: generated channels.
        channels, attention_levels, num_res_blocks, norm_num_groups, num_head_channels:
            the ``DiffusionModelUNet``.
        num_train_timesteps: T of the scheduler.
        num_inference_steps: Euler steps at sampling (10 and 50 in the benchmark).

    Call ``forward(condition)`` -> generated ``(B, out_channels, *S)``;
    ``forward(condition, target)`` -> the scalar L2 velocity loss (so that a DDP wrapper
    sees the training pass).
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 1,
        channels: Sequence[int] = (32, 64, 64),
        attention_levels: Sequence[bool] = (False, False, False),
        num_res_blocks: int = 1,
        norm_num_groups: int = 8,
        num_head_channels: int = 8,
        num_train_timesteps: int = 1000,
        num_inference_steps: int = 10,
    ) -> None:
        super().__init__()
        self.unet = DiffusionModelUNet(
            spatial_dims=spatial_dims,
            in_channels=in_channels + out_channels,
            out_channels=out_channels,
            channels=tuple(channels),
            attention_levels=tuple(attention_levels),
            num_res_blocks=num_res_blocks,
            norm_num_groups=norm_num_groups,
            num_head_channels=num_head_channels,
        )
        # RFlowScheduler is an nn.Module whose __init__ (MONAI 1.6.1) skips Module.__init__, so
        # registering it as a child breaks .to() and state_dict(); it holds no weights anyway.
        object.__setattr__(self, "scheduler", RFlowScheduler(num_train_timesteps=num_train_timesteps, spatial_dim=spatial_dims))
        self.out_channels = out_channels
        self.num_inference_steps = num_inference_steps

    def forward(self, condition: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        if target is not None:
            return self.velocity_loss(condition, target)
        return self.sample(condition)

    def velocity_loss(self, condition: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        noise = torch.randn_like(target)
        t = self.scheduler.sample_timesteps(target)
        noisy = self.scheduler.add_noise(target, noise, t)
        velocity = self.unet(torch.cat([noisy, condition], dim=1), timesteps=t)
        return F.mse_loss(velocity, target - noise)

    @torch.no_grad()
    def sample(self, condition: torch.Tensor, num_inference_steps: int | None = None) -> torch.Tensor:
        shape = (condition.shape[0], self.out_channels, *condition.shape[2:])
        start = torch.randn(shape, device=condition.device, dtype=condition.dtype)
        return denoise(
            self.scheduler,
            lambda x, t: self.unet(torch.cat([x, condition], dim=1), timesteps=t),
            start,
            num_inference_steps or self.num_inference_steps,
        )
