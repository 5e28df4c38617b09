"""A Stable Diffusion folder (v1.x, 2.x base) as an LD :class:`~ldmonai.ld.model.LatentDiffusion`.

The ``[sd]`` extra's backend, for users with SD weights on disk who want the paper's setting.
Two adapters give diffusers' networks the call signatures of MONAI's, so that the model, the
latent drift wrapper, the fine-tuning schemes, the editing and the bundle runs stay one code
path; MONAI's DDIM/DDPM run SD's betas (``scaled_linear`` 0.00085 to 0.012).

Slices are grey and in [0, 1]; SD's autoencoder saw RGB in [-1, 1]. The autoencoder adapter
repeats the grey channel and rescales on the way in, and averages the channels on the way out.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from ldmonai.errors import LdmonaiError, first_line
from ldmonai.ld.model import LatentDiffusion

__all__ = ["DiffusersAutoencoder", "DiffusersUNet", "load_stable_diffusion"]

_SCHEDULES = {"scaled_linear": "scaled_linear_beta", "linear": "linear_beta"}


class DiffusersUNet(nn.Module):
    """``unet(x, timesteps=t, context=c) -> ε`` on a diffusers ``UNet2DConditionModel``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    @property
    def in_channels(self) -> int:
        return int(self.model.config.in_channels)

    @property
    def out_channels(self) -> int:
        return int(self.model.config.out_channels)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(x, timesteps, encoder_hidden_states=context).sample


class DiffusersAutoencoder(nn.Module):
    """MONAI ``AutoencoderKL``'s encode/decode calls on a diffusers ``AutoencoderKL``.

    Args:
        vae: the diffusers autoencoder.
        image_channels: channels of the slices (1: grey, repeated to the autoencoder's RGB).
    """

    def __init__(self, vae: nn.Module, image_channels: int = 1) -> None:
        super().__init__()
        self.vae, self.in_channels = vae, int(image_channels)
        self.downsample_factor = 2 ** (len(vae.config.block_out_channels) - 1)

    def _to_vae(self, x: torch.Tensor) -> torch.Tensor:
        x = x * 2 - 1
        rgb = int(self.vae.config.in_channels)
        return x.expand(-1, rgb, *x.shape[2:]) if x.shape[1] == 1 and rgb != 1 else x

    def _from_vae(self, y: torch.Tensor) -> torch.Tensor:
        if self.in_channels == 1 and y.shape[1] != 1:
            y = y.mean(1, keepdim=True)
        return (y + 1) / 2

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dist = self.vae.encode(self._to_vae(x)).latent_dist
        return dist.mean, dist.std

    def encode_stage_2_inputs(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(self._to_vae(x)).latent_dist.sample()

    def decode_stage_2_outputs(self, z: torch.Tensor) -> torch.Tensor:
        return self._from_vae(self.vae.decode(z).sample)


def load_stable_diffusion(path: str | os.PathLike, image_channels: int = 1, text_dropout: float = 0.0) -> LatentDiffusion:
    """A :class:`LatentDiffusion` from a local diffusers Stable Diffusion folder.

    The folder holds ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/`` and ``scheduler/``
    as ``save_pretrained`` writes them (the layout of the SD-v1.4 release). Nothing is
    downloaded. The latent scale is the autoencoder's ``scaling_factor`` (0.18215 for SD-v1).
    """
    try:
        from diffusers import AutoencoderKL, UNet2DConditionModel
    except ImportError:
        raise LdmonaiError("the Stable Diffusion backend needs diffusers", path, 'pip install "ldmonai[sd]"') from None
    from ldmonai.ld.clip_text_encoder import ClipTextEncoder

    folder = Path(path)
    missing = [d for d in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if not (folder / d).is_dir()]
    if missing:
        raise LdmonaiError(f"not a Stable Diffusion folder: no {', '.join(missing)}", path,
                           "give the folder of a diffusers Stable Diffusion model (e.g. a local copy of SD-v1.4)")
    try:
        sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        unet = UNet2DConditionModel.from_pretrained(str(folder / "unet"), local_files_only=True)
        vae = AutoencoderKL.from_pretrained(str(folder / "vae"), local_files_only=True)
    except (OSError, ValueError) as err:
        raise LdmonaiError(f"cannot load the model ({first_line(err)})", path, "check that the folder is complete") from None
    if sched.get("prediction_type", "epsilon") != "epsilon":
        raise LdmonaiError(f"the model predicts {sched['prediction_type']!r}; LD's losses and samplers use ε", path,
                           "use an ε-prediction model (SD v1.x, SD 2.x base)")
    schedule = _SCHEDULES.get(sched.get("beta_schedule", "scaled_linear"))
    if schedule is None:
        raise LdmonaiError(f"beta schedule {sched.get('beta_schedule')!r} has no MONAI counterpart here", path,
                           f"use one of {', '.join(_SCHEDULES)}")
    return LatentDiffusion(DiffusersAutoencoder(vae, image_channels), DiffusersUNet(unet), ClipTextEncoder(folder),
                           scale_factor=float(getattr(vae.config, "scaling_factor", 0.18215)),
                           num_train_timesteps=int(sched.get("num_train_timesteps", 1000)), schedule=schedule,
                           beta_start=float(sched.get("beta_start", 0.00085)), beta_end=float(sched.get("beta_end", 0.012)),
                           text_dropout=text_dropout)
