"""Latent Drifting (Yeganeh et al., CVPR 2025): a signed shift δ of the diffusion prior and of every reverse mean.

The drift is one small wrapper around a scheduler, so that training loops, samplers and MONAI's
inferers stay unchanged: they call ``add_noise``, ``step`` and ``model_input`` as always. The
derivation, line by line against this code, is in ``docs/ld.md`` ("The latent drift, derived").

LD runs the wrapped scheduler S in coordinates centred at δ, y = z − δ:

    forward    z_t = δ + S.add_noise(z_0 − δ, ε, t)
                   = sqrt(abar_t) z_0 + (1 − sqrt(abar_t)) δ + sqrt(1 − abar_t) ε        (add_noise)
    prior      z_T = δ + ε,  ε ~ N(0, I),  i.e. q(z_T) ≈ N(δ, I)                          (prior)
    network    ε_θ(z_t − δ, t), trained to predict ε                                         (model_input)
    reverse    z_{t−1} = S.step(ε_θ, t, z_t − δ) + δ,
               i.e. p(z_{t−1} | z_t) = N(μ_θ(z_t − δ, t) + δ, Σ_t)                           (step)

where μ_θ and Σ_t are S's own reverse mean and variance (DDPM, DDIM). Two consequences, which
``tests/test_ld_latent_drift.py`` checks against closed forms:

- a model fine-tuned with δ and sampled with the same δ reproduces its training distribution
  (the chain in y is S's chain on the data shifted by −δ, and the last +δ undoes the shift), for
  any S and any number of steps;
- a model that never saw δ, sampled with δ, gives its own distribution translated by δ.

δ is a scalar or one value per latent channel; δ = 0 gives the wrapped scheduler bit for bit.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ldmonai.errors import LdmonaiError

__all__ = ["LatentDriftScheduler"]

#: |δ| above this is refused: the paper searches [-0.2, 0.2]; a drift added at every one of
#: tens of reverse steps moves the latent far outside what the autoencoder decodes.
MAX_ABS_DELTA = 1.0


class LatentDriftScheduler:
    """Wrap a MONAI (DDPM, DDIM, PNDM) or diffusers scheduler with a latent drift δ.

    Args:
        scheduler: the scheduler to wrap. MONAI's ``step`` returns ``(prev, x0)``;
            diffusers' returns an output with ``prev_sample`` (or a tuple with
            ``return_dict=False``). Both are handled; every other attribute
            (``timesteps``, ``set_timesteps``, ``alphas_cumprod``, ...) passes through.
        delta: δ, a float or a sequence of one value per latent channel.
        max_abs_delta: largest |δ| accepted.

    Shapes:
        ``sample``, ``model_output``, ``noise``, ``original_samples``: ``(B, C, *S)``; a
        per-channel δ needs ``C == len(delta)``.
    """

    def __init__(self, scheduler: Any, delta: float | Sequence[float] = 0.0, max_abs_delta: float = MAX_ABS_DELTA) -> None:
        self.scheduler = scheduler
        self.max_abs_delta = float(max_abs_delta)
        self.delta = delta

    # Attribute pass-through keeps the wrapper a drop-in scheduler for loops and inferers.
    def __getattr__(self, name: str) -> Any:
        if name == "scheduler":  # not set yet (copy, unpickling): avoid recursing
            raise AttributeError(name)
        return getattr(self.scheduler, name)

    @property
    def delta(self) -> torch.Tensor:
        """δ as a 1-D float tensor: one value (scalar drift) or one per channel."""
        return self._delta

    @delta.setter
    def delta(self, value: float | Sequence[float]) -> None:
        d = torch.as_tensor(value, dtype=torch.float32).reshape(-1)
        if d.numel() == 0:
            raise LdmonaiError("latent drift δ is empty", None, "give a float, or one value per latent channel")
        if not torch.isfinite(d).all():
            raise LdmonaiError(f"latent drift δ={d.tolist()} is not finite", None, "give finite values")
        worst = float(d.abs().max())
        if worst > self.max_abs_delta:
            raise LdmonaiError(
                f"latent drift δ={d.tolist() if d.numel() > 1 else float(d)} is out of range "
                f"[-{self.max_abs_delta:g}, {self.max_abs_delta:g}]",
                None,
                "the paper's search range is [-0.2, 0.2]; pass max_abs_delta to allow larger drifts",
            )
        self._delta = d

    @property
    def is_null(self) -> bool:
        return bool((self._delta == 0).all())

    def shift_like(self, x: torch.Tensor) -> torch.Tensor:
        """δ broadcast to ``x``: ``(1,)`` or ``(1, C, 1, ...)``."""
        d = self._delta.to(device=x.device, dtype=x.dtype)
        if d.numel() == 1:
            return d.reshape([1] * x.ndim)
        if x.ndim < 2 or x.shape[1] != d.numel():
            raise LdmonaiError(
                f"a per-channel latent drift has {d.numel()} values but the latent has shape {tuple(x.shape)} "
                f"({x.shape[1] if x.ndim > 1 else 'no'} channels)",
                None,
                "give one δ per latent channel of the autoencoder, or a single float",
            )
        return d.reshape(1, -1, *([1] * (x.ndim - 2)))

    def prior(self, shape: Sequence[int], generator: torch.Generator | None = None, device=None,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """z_T = ε + δ ~ N(δ, I) of ``shape``."""
        noise = torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
        return noise if self.is_null else noise + self.shift_like(noise)

    def model_input(self, sample: torch.Tensor) -> torch.Tensor:
        """What the network sees: the sample in the centred coordinates, z − δ."""
        return sample if self.is_null else sample - self.shift_like(sample)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """z_t = δ + S.add_noise(z_0 − δ, ε, t); ``noise`` is ε (zero mean), the network's target."""
        if self.is_null:
            return self.scheduler.add_noise(original_samples, noise, timesteps)
        shift = self.shift_like(original_samples)
        return self.scheduler.add_noise(original_samples - shift, noise, timesteps) + shift

    def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        """z_{t−1} = S.step(ε_θ, t, z_t − δ) + δ; the x0 estimate gets +δ too."""
        if self.is_null:
            return self.scheduler.step(model_output, timestep, sample, *args, **kwargs)
        shift = self.shift_like(sample)
        out = self.scheduler.step(model_output, timestep, sample - shift, *args, **kwargs)
        if isinstance(out, tuple):  # MONAI (prev, x0) or diffusers return_dict=False
            return tuple(o + shift if isinstance(o, torch.Tensor) else o for o in out)
        out.prev_sample = out.prev_sample + shift  # diffusers SchedulerOutput
        if getattr(out, "pred_original_sample", None) is not None:
            out.pred_original_sample = out.pred_original_sample + shift
        return out

    def reversed_step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor) -> Any:
        """DDIM inversion of one drifted step: S.reversed_step on z − δ, then +δ."""
        if self.is_null:
            return self.scheduler.reversed_step(model_output, timestep, sample)
        shift = self.shift_like(sample)
        out = self.scheduler.reversed_step(model_output, timestep, sample - shift)
        return tuple(o + shift if isinstance(o, torch.Tensor) else o for o in out)
