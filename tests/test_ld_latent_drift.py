"""The latent drift δ against closed forms: analytic data, its optimal denoiser, the real sampling loop.

No network is trained. The forward process is read off the wrapper itself (``add_noise`` is affine
in z_0 and ε, so three probes give its coefficients a_t, b_t and offset c_t per timestep, and
``model_input`` gives what the network sees). For Gaussian data, and for a two-component Gaussian
mixture, the MSE-optimal ε-predictor of *that* forward process has a closed form:

    z_t = a_t z_0 + c_t + b_t ε,  z_0 ~ Σ_k w_k N(m_k, s_k²)
    E[ε | z_t] = Σ_k r_k(z_t) · b_t (z_t − a_t m_k − c_t) / (a_t² s_k² + b_t²),
    r_k(z_t) ∝ w_k N(z_t; a_t m_k + c_t, a_t² s_k² + b_t²)

which is what a network trained to convergence with the wrapper's ``add_noise`` would output. It
is plugged into ``ldmonai.diffusion.denoise`` with the wrapper as the scheduler (DDPM, 1000 steps;
DDIM, eta 0), and the samples are compared with the data distribution:

- trained and sampled at the same δ (0, ±0.05, ±0.1, one per channel): the data distribution;
- trained without δ and sampled with δ: the model's distribution translated by δ;
- δ = 0: the wrapped scheduler bit for bit.

The old wrapper (noise ε + δ in training, +δ after every step on the drifted sample) gives a sample
mean of 1.93 for data of mean 0.3 at δ = 0.05 here, and fails every δ ≠ 0 case.
"""

import math

import pytest
import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, PNDMScheduler

from ldmonai.diffusion import denoise
from ldmonai.diffusion.latent_drift import LatentDriftScheduler
from ldmonai.errors import LdmonaiError

N = 10000  # samples per channel: the Monte-Carlo error of a mean is s / 100


def make(kind: str):
    args = dict(num_train_timesteps=1000, schedule="scaled_linear_beta", beta_start=0.00085, beta_end=0.012,
                clip_sample=False)
    return {"ddpm": DDPMScheduler, "ddim": DDIMScheduler}[kind](**args)


class OptimalDenoiser:
    """E[ε | network input] for per-channel Gaussian mixtures under ``train``'s forward process.

    Args:
        train: the (wrapped) scheduler whose ``add_noise`` defines the forward process.
        components: per channel, a list of (weight, mean, sd); every channel has as many.
    """

    def __init__(self, train, components: list[list[tuple[float, float, float]]]):
        self.train, self.cache = train, {}
        self.centre = getattr(train, "model_input", lambda x: x)
        # (K, 1, C, 1) tensors of weights, means and sds, K components per channel
        w, m, sd = (torch.tensor([[c[i] for c in channel] for channel in components], dtype=torch.float64).T[:, None, :, None]
                    for i in range(3))
        self.log_w, self.m, self.s2 = w.log(), m, sd**2

    def coefficients(self, t: int, channels: int):
        if t not in self.cache:
            zero = torch.zeros(1, channels, 1)
            steps = torch.tensor([t])
            offset = self.train.add_noise(zero, zero, steps).double()
            a = self.train.add_noise(zero + 1, zero, steps).double() - offset
            b = self.train.add_noise(zero, zero + 1, steps).double() - offset
            shift = -self.centre(zero).double()  # z = network input + shift
            self.cache[t] = (a, b, offset, shift)
        return self.cache[t]

    def __call__(self, u: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, b, c, shift = self.coefficients(int(t[0]), u.shape[1])
        z = u.double() + shift
        var = a**2 * self.s2 + b**2                       # (K, 1, C, 1)
        r = z[None] - a * self.m - c                      # (K, N, C, 1)
        resp = torch.softmax(self.log_w - 0.5 * r**2 / var - 0.5 * var.log(), dim=0)
        return (resp * b * r / var).sum(0).to(u.dtype)


def sample(kind: str, train_delta, sample_delta, components, steps: int, seed: int = 0, n: int = N) -> torch.Tensor:
    """``(n, C, 1)`` samples of the real loop with the wrapper at ``sample_delta``, from the optimal
    denoiser of the forward process at ``train_delta``."""
    model = OptimalDenoiser(LatentDriftScheduler(make(kind), train_delta), components)
    sched = LatentDriftScheduler(make(kind), sample_delta)
    generator = torch.Generator().manual_seed(seed)
    start = sched.prior((n, len(components), 1), generator=generator)
    with torch.no_grad():
        return denoise(sched, model, start, steps, generator=generator)


GAUSSIAN = [[(1.0, 0.3, 0.5)]]
CHANNELS = [[(1.0, 0.3, 0.5)], [(1.0, -0.2, 0.3)], [(1.0, 0.5, 0.8)], [(1.0, 0.0, 1.0)]]
MIXTURE = [[(0.4, -1.0, 0.3), (0.6, 1.2, 0.4)]]
# (steps, tolerance). DDPM runs all 1000 steps: MONAI's DDPM step does not respace its variances, so
# fewer steps give another distribution even at δ = 0. DDIM at 50 steps is biased by its own discretisation even at δ = 0 (mean
# 0.281, sd 0.484 for N(0.3, 0.5²)); the tolerance covers that, and is 40x smaller than the old
# wrapper's error (mean 1.93 at δ = 0.05).
RUNS = {"ddpm": (1000, 0.025), "ddim": (50, 0.04)}


def moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.mean(dim=(0, 2)), x.std(dim=(0, 2))


@pytest.mark.parametrize("kind", sorted(RUNS))
@pytest.mark.parametrize("delta", [0.0, 0.05, -0.05, 0.1, -0.1])
def test_trained_and_sampled_at_the_same_delta_gives_the_data(kind, delta):
    steps, tol = RUNS[kind]
    mean, sd = moments(sample(kind, delta, delta, GAUSSIAN, steps))
    assert abs(float(mean[0]) - 0.3) < tol and abs(float(sd[0]) - 0.5) < tol, (kind, delta, mean, sd)


@pytest.mark.parametrize("kind", sorted(RUNS))
def test_per_channel_delta_gives_each_channel_its_data(kind):
    steps, tol = RUNS[kind]
    delta = [0.1, -0.05, 0.0, 0.05]
    mean, sd = moments(sample(kind, delta, delta, CHANNELS, steps, n=4000))
    # DDIM's discretisation bias grows with the data's spread (0.047 for the sd-0.8 channel at δ = 0)
    tol = 0.06 if kind == "ddim" else tol
    torch.testing.assert_close(mean, torch.tensor([0.3, -0.2, 0.5, 0.0]), atol=tol, rtol=0)
    torch.testing.assert_close(sd, torch.tensor([0.5, 0.3, 0.8, 1.0]), atol=tol * 1.5, rtol=0)


@pytest.mark.parametrize("kind", sorted(RUNS))
@pytest.mark.parametrize("delta", [0.0, 0.1, -0.1])
def test_a_mixture_keeps_both_modes_and_their_weights(kind, delta):
    steps, tol = RUNS[kind]
    x = sample(kind, delta, delta, MIXTURE, steps if kind == "ddpm" else 100).flatten()
    upper = x > 0.1  # the density's trough between the modes
    assert abs(float(upper.float().mean()) - 0.6) < 0.02, (kind, delta, float(upper.float().mean()))
    # DDIM's discretisation pulls each mode's mean inwards by up to 0.05 at 100 steps
    tol = 0.06 if kind == "ddim" else tol
    assert abs(float(x[upper].mean()) - 1.2) < tol and abs(float(x[~upper].mean()) + 1.0) < tol, (kind, delta)
    assert abs(float(x.mean()) - (0.4 * -1.0 + 0.6 * 1.2)) < tol, (kind, delta)


@pytest.mark.parametrize("kind", sorted(RUNS))
@pytest.mark.parametrize("delta", [0.1, -0.05, [0.1, -0.05, 0.0, 0.05]])
def test_a_model_trained_without_drift_is_translated_by_delta(kind, delta):
    """δ at inference only, from the same noise: every sample moves by exactly δ (per channel)."""
    steps, _ = RUNS[kind]
    plain = sample(kind, 0.0, 0.0, CHANNELS, steps, n=500)
    drifted = sample(kind, 0.0, delta, CHANNELS, steps, n=500)
    want = torch.as_tensor(delta, dtype=torch.float32).expand(4).reshape(1, 4, 1).expand_as(plain)
    torch.testing.assert_close(drifted - plain, want, atol=2e-5, rtol=0)


SCHEDULERS = {
    "ddpm": lambda: DDPMScheduler(1000, clip_sample=False),
    "ddim": lambda: DDIMScheduler(1000, clip_sample=False),
    "pndm": lambda: PNDMScheduler(1000, skip_prk_steps=True),
}


@pytest.mark.parametrize("kind", sorted(SCHEDULERS))
def test_zero_drift_is_exactly_the_wrapped_scheduler(kind):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 4, 3, padding=1)

    def model(x, t):
        return torch.tanh(conv(x)) * 0.5

    start = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))

    def gen():
        return None if kind == "pndm" else torch.Generator().manual_seed(2)

    with torch.no_grad():
        plain = denoise(SCHEDULERS[kind](), model, start.clone(), 10, generator=gen())
        wrapped = LatentDriftScheduler(SCHEDULERS[kind](), 0.0)
        drifted = denoise(wrapped, model, start.clone(), 10, generator=gen())
    assert torch.equal(plain, drifted)
    assert torch.equal(wrapped.prior((2, 4, 8, 8), torch.Generator().manual_seed(1)), start)
    z0, eps, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([10, 900])
    assert torch.equal(wrapped.add_noise(z0, eps, t), wrapped.scheduler.add_noise(z0, eps, t))


def test_prior_and_forward_marginal_are_centred_on_delta():
    """q(z_T) ≈ N(δ, I), the paper's prior, and z_0 is untouched at t = 0."""
    delta = [0.2, -0.2, 0.1, 0.0]
    sched = LatentDriftScheduler(DDPMScheduler(1000), delta)
    z0 = torch.zeros(4096, 4, 2, 2)
    eps = torch.randn(z0.shape, generator=torch.Generator().manual_seed(0))
    z_t = sched.add_noise(z0, eps, torch.full((z0.shape[0],), 999, dtype=torch.long))
    torch.testing.assert_close(z_t.mean(dim=(0, 2, 3)), torch.tensor(delta), atol=0.03, rtol=0)
    torch.testing.assert_close(sched.prior((4096, 4, 2, 2)).mean(dim=(0, 2, 3)), torch.tensor(delta), atol=0.03, rtol=0)
    abar0 = float(sched.alphas_cumprod[0])
    t0 = torch.zeros(z0.shape[0], dtype=torch.long)
    # z_t = sqrt(abar) z_0 + (1 - sqrt(abar)) δ + sqrt(1 - abar) ε, at t = 0
    want = (1 - math.sqrt(abar0)) * sched.shift_like(z0) + math.sqrt(1 - abar0) * eps
    torch.testing.assert_close(sched.add_noise(z0, eps, t0), want)


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
    """A diffusers DDIM inside the wrapper translates a model's output by δ, as MONAI's does."""
    diffusers = pytest.importorskip("diffusers", reason="diffusers comes with the [sd] and [dev] extras")
    steps, delta = 10, [0.1, -0.2, 0.0, 0.05]
    eps = torch.randn(8, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 4, 3, padding=1)

    def run(sched, start):
        sched.set_timesteps(steps)
        centre = getattr(sched, "model_input", lambda x: x)
        x = start
        with torch.no_grad():
            for t in sched.timesteps:
                out = sched.step(torch.tanh(conv(centre(x))) * 0.5, t, x, return_dict=return_dict)
                x = out.prev_sample if return_dict else out[0]
        return x

    def make_diffusers():
        return diffusers.DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                       beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=True)

    plain = run(make_diffusers(), eps)
    assert torch.equal(run(LatentDriftScheduler(make_diffusers(), 0.0), eps), plain)
    drift = LatentDriftScheduler(make_diffusers(), delta)
    shifted = run(drift, eps + drift.shift_like(eps))
    torch.testing.assert_close(shifted - plain, drift.shift_like(eps).expand_as(plain), atol=1e-5, rtol=0)
