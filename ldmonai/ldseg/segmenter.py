"""What LDSeg and its two baselines have in common, so one trainer, one inferer and one
evaluation serve all three and the comparison is fair.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

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
    and call :meth:`set_schedule` and :meth:`enable_ema` once.
    """

    denoiser: nn.Module
    ema_denoiser: AveragedModel | None  # set by enable_ema (a class default would hide the registered module)

    def set_schedule(
        self,
        num_train_timesteps: int,
        schedule: str,
        sampler: str,
        num_inference_steps: int,
        clip_sample: bool = True,
        prediction_type: str = "epsilon",
    ) -> None:
        self.num_train_timesteps = num_train_timesteps
        self.schedule = schedule
        self.prediction_type = prediction_type
        # x0 clipping to [-1, 1] is right for a mask in [-1, 1], wrong for a unit-variance latent
        self.clip_sample = clip_sample
        self.set_sampler(sampler, num_inference_steps)

    def set_sampler(self, sampler: str, num_inference_steps: int) -> None:
        """Switch between DDIM and DDPM sampling; training is unaffected (same alphas)."""
        self.scheduler = build_scheduler(
            sampler, self.num_train_timesteps, self.schedule, clip_sample=self.clip_sample, prediction_type=self.prediction_type
        )
        self.num_inference_steps = num_inference_steps

    def enable_ema(self, decay: float | None) -> None:
        """Keep an exponential moving average of the denoiser's weights for sampling.

        ``w_ema <- d w_ema + (1 - d) w`` after every optimiser step (:meth:`update_ema`),
        with ``d = min(decay, (1 + n) / (10 + n))`` after ``n`` updates: the warm-up keeps a
        short run (a few hundred steps at 0.999) from sampling with mostly initial weights.
        The average lives in the state dict, so checkpoints carry it. ``None`` turns it off.
        """
        self.ema_decay = decay
        if decay is None:
            self.ema_denoiser = None
            return
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1) or None, got {decay}")

        def average(avg: torch.Tensor, current: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
            d = min(decay, (1.0 + float(n)) / (10.0 + float(n)))
            return d * avg + (1.0 - d) * current

        self.ema_denoiser = AveragedModel(self.denoiser, avg_fn=average, use_buffers=True)
        self.ema_denoiser.requires_grad_(False)

    @torch.no_grad()
    def update_ema(self) -> None:
        """Fold the denoiser's current weights into the average (no-op without EMA)."""
        if self.ema_denoiser is not None:
            self.ema_denoiser.update_parameters(self.denoiser)

    def sampling_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights inference needs: the denoiser's entries hold the EMA's values, and the
        average itself is left out (half the denoiser's bytes; load into a model built with
        ``ema_decay=None``). Without an EMA, the plain state dict."""
        state = {k: v for k, v in self.state_dict().items() if not k.startswith("ema_denoiser.")}
        state.update({f"denoiser.{k}": v for k, v in self.sampling_denoiser().state_dict().items()})
        return state

    def sampling_denoiser(self) -> nn.Module:
        """The EMA denoiser once it has seen an update, else the trained one."""
        if self.ema_denoiser is not None and int(self.ema_denoiser.n_averaged) > 0:
            return self.ema_denoiser.module
        return self.denoiser

    def noised(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(noise, t, x_t)`` for a training step: one noise draw and one timestep per item,
        never shared across the batch. ``t`` has shape ``(B,)``, the others ``x0``'s shape."""
        noise = torch.randn_like(x0)
        t = torch.randint(0, self.num_train_timesteps, (x0.shape[0],), device=x0.device)
        return noise, t, self.scheduler.add_noise(x0, noise, t)

    def conditioned(self, condition: torch.Tensor, network: nn.Module | None = None):
        """``fn(x_t, t)``: the denoiser's output for ``[x_t, condition]``.

        Sampling replays the denoiser from a trace (:func:`~ldmonai.networks.replayer`): the
        same numbers without the per-step Python; training calls it directly.
        """
        denoiser = replayer(network if network is not None else self.denoiser)
        return lambda x, t: denoiser(torch.cat([x, condition], dim=1), t)

    def reverse(
        self, condition: torch.Tensor, channels: int, generator: torch.Generator | None = None, renormalise=None
    ) -> torch.Tensor:
        """Denoise fresh noise ``(len(condition), channels, *condition.shape[2:])`` to x0.

        ``renormalise(x)``, when given, is applied to the start noise, before every step and
        to the result (LDSeg's standardised latent).
        """
        shape = (condition.shape[0], channels, *condition.shape[2:])
        device = condition.device if generator is None else generator.device
        x = torch.randn(shape, generator=generator, device=device).to(condition.device)
        guide = None if renormalise is None else (lambda z, t: renormalise(z))
        fn = self.conditioned(condition, self.sampling_denoiser())
        x = denoise(self.scheduler, fn, x, self.num_inference_steps, generator, guide=guide)
        return x if renormalise is None else renormalise(x)
