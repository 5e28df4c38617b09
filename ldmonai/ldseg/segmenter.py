"""What LDSeg and its two baselines have in common, so one trainer, one inferer and one
evaluation serve all three and the comparison is fair.
"""

from __future__ import annotations

import torch
from torch import nn

from ldmonai.diffusion import build_scheduler, denoise
from ldmonai.ldseg.uncertainty import stack_maps, uncertainty_maps
from ldmonai.networks import replayer


class Segmenter(nn.Module):
    """Base class of the segmenters.

    Subclasses implement:
        ``training_outputs(image, label) -> dict``: the tensors the loss needs
        (``logits`` and/or ``noise`` with ``noise_pred``);
        ``sample(image, num_samples) -> (N, B, C, *S)`` class probabilities.

    ``forward(image)`` returns the ``(B, C, *S)`` mean probability over ``num_samples``
    samples, so that MONAI inferers, ``verify_net_in_out`` and MONAI Label can call any
    segmenter like a plain network.
    """

    num_classes: int
    num_samples: int = 1

    def training_outputs(self, image: torch.Tensor, label: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def sample(self, image: torch.Tensor, num_samples: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, image: torch.Tensor, label: torch.Tensor | None = None):
        """``(B, C, *S)`` mean probability; with a label, the training outputs instead.

        Training goes through ``forward`` because DistributedDataParallel only
        synchronises gradients of computations that pass through the wrapper's forward.
        """
        if label is not None:
            return self.training_outputs(image, label)
        return self.sample(image, self.num_samples).mean(0)

    @torch.no_grad()
    def predict_with_uncertainty(
        self, image: torch.Tensor, num_samples: int | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``(B, C + 2, *S)``: mean probability, entropy and variance (see :func:`stack_maps`)."""
        probs = self.sample(image, num_samples or self.num_samples, generator=generator)
        return stack_maps(uncertainty_maps(probs))


class DiffusionSegmenter(Segmenter):
    """A segmenter that samples by reverse diffusion with a ``denoiser`` conditioned by concatenation.

    Subclasses set ``self.denoiser`` (a MONAI ``DiffusionModelUNet`` taking ``[x_t, condition]``)
    and call :meth:`set_schedule` once.
    """

    denoiser: nn.Module

    def set_schedule(self, num_train_timesteps: int, schedule: str, sampler: str, num_inference_steps: int) -> None:
        self.num_train_timesteps = num_train_timesteps
        self.schedule = schedule
        self.set_sampler(sampler, num_inference_steps)

    def set_sampler(self, sampler: str, num_inference_steps: int) -> None:
        """Switch between DDIM and DDPM sampling; training is unaffected (same alphas)."""
        self.scheduler = build_scheduler(sampler, self.num_train_timesteps, self.schedule)
        self.num_inference_steps = num_inference_steps

    def noised(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(noise, t, x_t)`` for a training step: one noise draw and one timestep per item,
        never shared across the batch. ``t`` has shape ``(B,)``, the others ``x0``'s shape."""
        noise = torch.randn_like(x0)
        t = torch.randint(0, self.num_train_timesteps, (x0.shape[0],), device=x0.device)
        return noise, t, self.scheduler.add_noise(x0, noise, t)

    def conditioned(self, condition: torch.Tensor):
        """``fn(x_t, t)``: the denoiser's output for ``[x_t, condition]``.

        Sampling replays the denoiser from a trace (:func:`~ldmonai.networks.replayer`): the
        same numbers without the per-step Python; training calls it directly.
        """
        denoiser = replayer(self.denoiser)
        return lambda x, t: denoiser(torch.cat([x, condition], dim=1), t)

    def reverse(self, condition: torch.Tensor, channels: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Denoise fresh noise ``(len(condition), channels, *condition.shape[2:])`` to x0."""
        shape = (condition.shape[0], channels, *condition.shape[2:])
        device = condition.device if generator is None else generator.device
        x = torch.randn(shape, generator=generator, device=device).to(condition.device)
        return denoise(self.scheduler, self.conditioned(condition), x, self.num_inference_steps, generator)
