"""The latent drift δ as a scheduler wrapper: exact at δ = 0, the expected shift at δ ≠ 0."""

import math

import pytest
import torch
from monai.inferers import DiffusionInferer
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, PNDMScheduler

from ldmonai.diffusion import denoise
from ldmonai.diffusion.latent_drift import LatentDriftScheduler
from ldmonai.errors import LdmonaiError


def _model():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 4, 3, padding=1)
    return lambda x, t: torch.tanh(conv(x)) * 0.5


SCHEDULERS = {
    "ddpm": lambda: DDPMScheduler(1000, clip_sample=False),
    "ddim": lambda: DDIMScheduler(1000, clip_sample=False),
    "pndm": lambda: PNDMScheduler(1000, skip_prk_steps=True),
}


@pytest.mark.parametrize("kind", sorted(SCHEDULERS))
def test_zero_drift_is_exactly_the_wrapped_scheduler(kind):
    model = _model()
    start = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    def gen():
        return None if kind == "pndm" else torch.Generator().manual_seed(2)

    with torch.no_grad():
        plain = denoise(SCHEDULERS[kind](), model, start.clone(), 10, generator=gen())
        wrapped = LatentDriftScheduler(SCHEDULERS[kind](), 0.0)
        drifted = denoise(wrapped, model, start.clone(), 10, generator=gen())
    assert torch.equal(plain, drifted)
    assert torch.equal(wrapped.prior((2, 4, 8, 8), torch.Generator().manual_seed(1)), start)


class NullModel(torch.nn.Module):
    """Predicts zero noise: every DDIM step then only rescales its input."""

    def forward(self, x, timesteps=None, context=None):
        return torch.zeros_like(x)


def _null_shift(sched, steps: int) -> float:
    """Final shift per unit δ of DDIM (eta 0) under a zero-noise model.

    Each step maps x_t to sqrt(abar_prev / abar_t) x_t (+ δ), with prev = t - T // steps, so
    m_{t-1} = sqrt(abar_prev / abar_t) m_t + 1 from m_T = 1. ``sched`` is a MONAI or a
    diffusers DDIM scheduler: they place their timesteps differently, not their steps.
    """
    sched.set_timesteps(steps)
    ratio = sched.config.num_train_timesteps // steps if hasattr(sched, "config") else sched.num_train_timesteps // steps
    m = 1.0
    for t in [int(t) for t in sched.timesteps]:
        prev = t - ratio
        a_prev = float(sched.alphas_cumprod[prev]) if prev >= 0 else float(sched.final_alpha_cumprod)
        m = math.sqrt(a_prev / float(sched.alphas_cumprod[t])) * m + 1.0
    return m


@pytest.mark.parametrize("delta", [0.1, -0.05, [0.1, -0.2, 0.0, 0.05]])
def test_null_model_shifts_the_sample_mean_by_the_expected_amount(delta):
    """MONAI's own DiffusionInferer drives the wrapper; start z_T = ε + δ against ε alone."""
    steps = 10
    eps = torch.randn(64, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    inferer = DiffusionInferer(DDIMScheduler(1000, schedule="scaled_linear_beta", clip_sample=False))
    plain_sched = DDIMScheduler(1000, schedule="scaled_linear_beta", clip_sample=False)
    plain_sched.set_timesteps(steps)
    drift = LatentDriftScheduler(DDIMScheduler(1000, schedule="scaled_linear_beta", clip_sample=False), delta)
    drift.set_timesteps(steps)
    with torch.no_grad():
        plain = inferer.sample(eps, NullModel(), plain_sched)
        drifted = inferer.sample(eps + drift.shift_like(eps), NullModel(), drift)
    expected = _null_shift(DDIMScheduler(1000, schedule="scaled_linear_beta", clip_sample=False), steps)
    per_channel = (drifted - plain).mean(dim=(0, 2, 3))
    want = torch.as_tensor(delta, dtype=torch.float32).expand(4) * expected
    torch.testing.assert_close(per_channel, want, rtol=1e-4, atol=1e-4)
    assert expected > steps  # the drift accumulates over the steps, more than one δ per step


def test_forward_target_is_centred_on_delta():
    sched = LatentDriftScheduler(DDPMScheduler(1000), [0.2, -0.2, 0.1, 0.0])
    z0 = torch.zeros(4096, 4, 2, 2)
    eps = torch.randn(z0.shape, generator=torch.Generator().manual_seed(0))
    t_last = torch.full((z0.shape[0],), 999, dtype=torch.long)
    z_t = sched.add_noise(z0, eps, t_last)
    # exactly the wrapped scheduler with ε + δ as its noise
    torch.testing.assert_close(z_t, sched.scheduler.add_noise(z0, eps + sched.shift_like(eps), t_last))
    mean = z_t.mean(dim=(0, 2, 3))
    scale = float((1 - sched.alphas_cumprod[999]).sqrt())
    torch.testing.assert_close(mean, torch.tensor([0.2, -0.2, 0.1, 0.0]) * scale, atol=0.02, rtol=0)
    # z_0 is untouched at t = 0 up to the first step's noise level
    t0 = torch.zeros(z0.shape[0], dtype=torch.long)
    assert float((sched.add_noise(z0, eps, t0) - z0).abs().max()) < 0.2


def test_bad_delta_is_one_clear_error():
    with pytest.raises(LdmonaiError, match=r"out of range \[-1, 1\].*\[-0.2, 0.2\]"):
        LatentDriftScheduler(DDIMScheduler(1000), 1.5)
    with pytest.raises(LdmonaiError, match="not finite"):
        LatentDriftScheduler(DDIMScheduler(1000), float("nan"))
    sched = LatentDriftScheduler(DDIMScheduler(1000), [0.1, 0.1, 0.1])
    with pytest.raises(LdmonaiError, match="3 values but the latent has shape .*4 channels"):
        sched.add_noise(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2), torch.zeros(1, dtype=torch.long))
    LatentDriftScheduler(DDIMScheduler(1000), 1.5, max_abs_delta=2.0)  # allowed when asked for


@pytest.mark.parametrize("return_dict", [True, False])
def test_wraps_diffusers_schedulers_the_same_way(return_dict):
    diffusers = pytest.importorskip("diffusers", reason="diffusers comes with the [sd] and [dev] extras")
    steps, delta = 10, [0.1, -0.2, 0.0, 0.05]
    eps = torch.randn(8, 4, 4, 4, generator=torch.Generator().manual_seed(0))

    def run(sched, start):
        sched.set_timesteps(steps)
        x = start
        for t in sched.timesteps:
            out = sched.step(torch.zeros_like(x), t, x, return_dict=return_dict)
            x = out.prev_sample if return_dict else out[0]
        return x

    def make():
        return diffusers.DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                       beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=True)

    plain = run(make(), eps)
    assert torch.equal(run(LatentDriftScheduler(make(), 0.0), eps), plain)
    drift = LatentDriftScheduler(make(), delta)
    shifted = run(drift, eps + drift.shift_like(eps))
    expected = _null_shift(make(), steps)
    torch.testing.assert_close((shifted - plain).mean(dim=(0, 2, 3)), torch.tensor(delta) * expected, rtol=1e-4, atol=1e-4)
