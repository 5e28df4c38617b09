"""The one reverse-diffusion loop, and the few helpers around MONAI's schedulers.

A scheduler owns the maths of one step; a model owns the network. This module only wires
them: it never knows what is being denoised (a label latent, an image latent, a mask).
"""

from __future__ import annotations

from typing import Callable

import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, RFlowScheduler, Scheduler
from tqdm.auto import tqdm

_KINDS = {"ddim": DDIMScheduler, "ddpm": DDPMScheduler}


def build_scheduler(kind: str = "ddim", num_train_timesteps: int = 1000, schedule: str = "cosine", **kwargs) -> Scheduler:
    """A MONAI DDIM or DDPM scheduler by name, so configs can switch samplers with one string."""
    try:
        cls = _KINDS[kind.lower()]
    except KeyError:
        raise ValueError(f"unknown sampler {kind!r}; choose one of {sorted(_KINDS)}") from None
    return cls(num_train_timesteps=num_train_timesteps, schedule=schedule, **kwargs)


def predict_original(scheduler: Scheduler, sample: torch.Tensor, noise_pred: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """x0 from an epsilon prediction at per-item timesteps (the DDIM paper's eq. 12).

    MONAI's ``step`` takes one scalar timestep; training draws one per batch item, so the
    same formula is applied here with broadcasting.

    Args:
        sample: ``(B, C, *S)`` noisy sample x_t.
        noise_pred: ``(B, C, *S)`` predicted noise.
        timesteps: ``(B,)`` integer timesteps.
    """
    abar = scheduler.alphas_cumprod.to(sample.device)[timesteps].float()
    abar = abar.reshape(-1, *([1] * (sample.ndim - 1)))
    return (sample - (1 - abar).sqrt() * noise_pred) / abar.sqrt()


def denoise(
    scheduler: Scheduler,
    model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    sample: torch.Tensor,
    num_inference_steps: int,
    generator: torch.Generator | None = None,
    progress: bool = False,
    guide: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Run the reverse process from pure noise to x0.

    Args:
        scheduler: a MONAI scheduler with ``set_timesteps`` and ``step`` (DDPM, DDIM, or
            RFlow, whose Euler step is told the next timestep).
        model_fn: ``model_fn(x_t, t)`` with ``x_t`` of shape ``(B, C, *S)`` and ``t`` of shape
            ``(B,)``; returns the network output the scheduler expects.
        sample: ``(B, C, *S)`` the starting noise x_T.
        num_inference_steps: number of reverse steps (10 to 15 for DDIM, up to T for DDPM).
        generator: random source for stochastic steps (DDPM, DDIM with eta > 0); leave it out
            for deterministic schedulers such as PNDM.
        progress: show a progress bar.
        guide: ``guide(x_t, t) -> x_t'``, a correction of the sample before each step
            (Pix2Pix-Zero's cross-attention guidance); the step then starts from ``x_t'``.

    Returns:
        ``(B, C, *S)`` the final sample.
    """
    rflow = isinstance(scheduler, RFlowScheduler)
    centre = getattr(scheduler, "model_input", None)  # a latent drift's network coordinates, z − δ
    if rflow:
        scheduler.set_timesteps(num_inference_steps, device=sample.device, input_img_size_numel=int(sample[0, 0].numel()))
    else:
        scheduler.set_timesteps(num_inference_steps, device=sample.device)
    steps = [int(t) for t in scheduler.timesteps]
    # a flow step integrates over [t, next t]; the last one ends at t = 0
    following = steps[1:] + [0]
    for t, t_next in tqdm(list(zip(steps, following)), desc="sampling", leave=False, disable=not progress):
        t_batch = torch.full((sample.shape[0],), t, device=sample.device, dtype=torch.long)
        if guide is not None:
            if centre is None:
                sample = guide(sample, t_batch)
            else:  # the guide steers in the network's coordinates; its correction carries over
                centred = centre(sample)
                sample = sample + (guide(centred, t_batch) - centred)
        output = model_fn(sample if centre is None else centre(sample), t_batch)
        if rflow:
            sample, _ = scheduler.step(output, t, sample, t_next)
        else:
            # deterministic schedulers (PNDM) take no generator
            sample, _ = scheduler.step(output, t, sample, **({"generator": generator} if generator is not None else {}))
    return sample


def invert(
    scheduler: Scheduler,
    model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    sample: torch.Tensor,
    num_inference_steps: int,
    progress: bool = False,
) -> torch.Tensor:
    """DDIM inversion: the z_T from which :func:`denoise` (DDIM, eta 0) returns ``sample``.

    Each forward step at ``t`` maps z_t to z_{t - T/n}; it is undone with the scheduler's
    ``reversed_step`` from ``t - T/n`` to ``t``, with ε_θ evaluated at ``t`` on the lower-noise
    latent (the usual approximation, exact when ε_θ varies slowly). A
    :class:`~ldmonai.diffusion.latent_drift.LatentDriftScheduler` removes its δ per step.

    Args:
        scheduler: a MONAI ``DDIMScheduler``, possibly inside a latent drift wrapper.
        model_fn, num_inference_steps: as for :func:`denoise`, which this undoes.
        sample: ``(B, C, *S)`` clean latent z_0.

    Returns:
        ``(B, C, *S)`` the inverted start z_T.
    """
    scheduler.set_timesteps(num_inference_steps, device=sample.device)
    ratio = scheduler.num_train_timesteps // scheduler.num_inference_steps
    centre = getattr(scheduler, "model_input", lambda x: x)  # a latent drift's network coordinates, z − δ
    for t in tqdm([int(t) for t in reversed(scheduler.timesteps)], desc="inverting", leave=False, disable=not progress):
        t_batch = torch.full((sample.shape[0],), t, device=sample.device, dtype=torch.long)
        eps = model_fn(centre(sample), t_batch)
        if t - ratio >= 0:
            sample, _ = scheduler.reversed_step(eps, t - ratio, sample)
        else:
            # the last DDIM step ends at alpha = 1 (no noise), which reversed_step cannot index;
            # a zero-noise step back to t is the forward process with ε_θ as the noise
            # (in the centred coordinates of a latent drift: z_t = δ + S.add_noise(z_0 − δ, ε_θ, t))
            x0 = centre(sample)
            abar = scheduler.alphas_cumprod.to(sample.device)[t]
            sample = abar.sqrt() * x0 + (1 - abar).sqrt() * eps + (sample - x0)
    return sample
