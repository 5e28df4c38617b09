"""Latent Drifting (Yeganeh et al., CVPR 2025): a signed shift δ of the diffusion prior and of every reverse mean.

The drift is one small wrapper around a scheduler, so that training loops, samplers and
MONAI's inferers stay unchanged: they call ``add_noise`` and ``step`` as always.

Forward process (fine-tuning with LD). δ enters as a mean of the noise, ε + δ:

    z_t = sqrt(abar_t) * z_0 + sqrt(1 - abar_t) * (ε + δ),    ε ~ N(0, I)

so every noised latent carries the shift in proportion to its noise level, z_0 is untouched,
and the forward target is z_T ~ N(sqrt(1 - abar_T) δ, (1 - abar_T) I) ≈ N(δ, I). The
network's regression target is still computed from ε (the zero-mean part): the model learns
to remove the drifted noise without being told δ.

Reverse process (sampling, with or without LD fine-tuning). The start is z_T = ε + δ, and
each step of the wrapped scheduler S gets δ on its mean:

    z_{t-1} = S(ε_θ(z_t, t), t, z_t) + δ,    i.e.  p(z_{t-1} | z_t) = N(μ_θ(z_t, t) + δ, Σ_t)

where S already adds its own Σ_t noise (DDPM, DDIM with eta > 0). With a model that was not
fine-tuned with LD, δ is a conditioning knob at inference alone. δ is a scalar or one value
per latent channel; δ = 0 gives the wrapped scheduler's result exactly.
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
        """z_T ~ N(δ, I) of ``shape``."""
        noise = torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
        return noise + self.shift_like(noise)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) (ε + δ); ``noise`` is ε (zero mean)."""
        return self.scheduler.add_noise(original_samples, noise + self.shift_like(noise), timesteps)

    def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        """The wrapped step, with δ added to the previous sample (the reverse mean)."""
        out = self.scheduler.step(model_output, timestep, sample, *args, **kwargs)
        if self.is_null:
            return out
        if isinstance(out, tuple):  # MONAI (prev, x0) or diffusers return_dict=False
            prev = out[0]
            return (prev + self.shift_like(prev), *out[1:])
        prev = out.prev_sample  # diffusers SchedulerOutput
        out.prev_sample = prev + self.shift_like(prev)
        return out

    def reversed_step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor) -> Any:
        """DDIM inversion of one drifted step: remove δ, then the wrapped ``reversed_step``."""
        return self.scheduler.reversed_step(model_output, timestep, sample - self.shift_like(sample))
