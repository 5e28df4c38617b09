"""The drifting field against hand-computed answers and the reference's kernel scale.

Closed forms: a symmetric pair of samples and targets, and the uniform-kernel limit (tau large)
of two Gaussian clouds, where every softmax is 1/count and V is a sum that can be written down.
The kernel scale: the temperature acts on distances divided by their mean (lambertae/drifting,
``drift_loss.py`` l. 70-95), checked against an independent numpy evaluation and through the
effective neighbour count. And a generator trained with the drifting loss alone on a 2-D mixture
must cover every mode.
"""

import math

import numpy as np
import pytest
import torch

from ldmonai.gdm.drift_field import DriftingLoss, drift_field, effective_neighbours, normalize_features

FLOOR = 0.0  # the affinity floor: the reference's 1e-3 is left out, see the module docstring (step 4)


def _softmax(z, axis):
    z = z - np.max(z, axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def _reference_field(x, y, tau):
    """Steps 1 and 3 to 5 of ``ldmonai.gdm.drift_field``'s docstring, in numpy, from the equations."""
    t = np.concatenate([x, y])
    d = np.sqrt(((x[:, None] - t[None]) ** 2).sum(-1))
    logit = -(d / d.mean()) / tau
    n = len(x)
    logit[np.arange(n), np.arange(n)] = -np.inf
    a = np.sqrt(_softmax(logit, 1) * _softmax(logit, 0))
    a_neg, a_pos = a[:, :n], a[:, n:]
    return (a_pos * a_neg.sum(1, keepdims=True)) @ y - (a_neg * a_pos.sum(1, keepdims=True)) @ x


def test_symmetric_pair_matches_the_hand_computed_field():
    """x = (-1, 0), (1, 0); y = (-1, h), (1, h). Row i of the kernel sees distances 2 (the other
    sample), h and r = sqrt(4 + h^2), over the unit s = (4 + 2h + 2r) / 8."""
    h, tau = 1.5, 0.3
    r = math.sqrt(4 + h * h)
    s = (4 + 2 * h + 2 * r) / 8
    k = {dist: math.exp(-dist / s / tau) for dist in (2.0, h, r)}
    row = {dist: k[dist] / (k[2.0] + k[h] + k[r]) for dist in (2.0, h, r)}  # softmax over targets
    col_neg = 1.0  # the other sample is the only finite entry of its column (self is masked)
    col_pos = {dist: k[dist] / (k[h] + k[r]) for dist in (h, r)}  # each real target, over the two samples
    a_other = math.sqrt(row[2.0] * col_neg)
    a_near, a_far = (math.sqrt(row[dist] * col_pos[dist]) for dist in (h, r))
    sum_neg, sum_pos = a_other + FLOOR, a_near + a_far
    x1, x2, y1, y2 = (np.array(p) for p in ([-1.0, 0.0], [1.0, 0.0], [-1.0, h], [1.0, h]))
    v1 = sum_neg * (a_near * y1 + a_far * y2) - sum_pos * (FLOOR * x1 + a_other * x2)

    x = torch.tensor([[-1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([[-1.0, h], [1.0, h]], dtype=torch.float64)
    v = drift_field(x, y, None, tau=tau).numpy()
    np.testing.assert_allclose(v[0], v1, rtol=1e-10)
    np.testing.assert_allclose(v[1], v1 * [-1, 1], rtol=1e-10)  # the mirror image
    assert v1[1] > 0  # toward the real pair


def test_uniform_kernel_limit_of_two_gaussian_clouds():
    """tau -> infinity: each row softmax is 1/(N - 1 + P), each column softmax 1/(N - 1) for a
    negative and 1/N for a positive, so V_i is a weighted difference of sums."""
    rng = np.random.default_rng(0)
    n, p, c = 64, 96, 8
    x = rng.normal(size=(n, c))
    y = rng.normal(size=(p, c)) + 0.7
    a_neg = math.sqrt(1 / ((n - 1 + p) * (n - 1)))
    a_pos = math.sqrt(1 / ((n - 1 + p) * n))
    sum_neg, sum_pos = (n - 1) * a_neg + FLOOR, p * a_pos
    others = x.sum(0)[None] - x
    expected = a_pos * sum_neg * y.sum(0)[None] - sum_pos * (a_neg * others + FLOOR * x)
    v = drift_field(torch.from_numpy(x), torch.from_numpy(y), None, tau=1e9).numpy()
    np.testing.assert_allclose(v, expected, rtol=1e-6, atol=1e-9)
    mean_dir = v.mean(0) / np.linalg.norm(v.mean(0))
    shift = (y.mean(0) - x.mean(0)) / np.linalg.norm(y.mean(0) - x.mean(0))
    assert mean_dir @ shift > 0.99


@pytest.mark.parametrize("channels", [64, 128])
def test_the_temperature_acts_on_unit_mean_distances(channels):
    """On normalised features (mean distance sqrt(C)), the kernel must still divide distances by
    their mean before tau, as the reference does. The old kernel divided the sqrt(C)-scale distance
    by tau: a temperature sqrt(C) times colder, one neighbour per sample."""
    rng = np.random.default_rng(channels)
    x = torch.from_numpy(rng.normal(size=(1, 256, channels)))
    y = torch.from_numpy(rng.normal(size=(1, 256, channels)) + 0.1)
    x_n, y_n = normalize_features(x, y)
    for tau in (0.02, 0.05, 0.2):
        ours = drift_field(x_n, y_n, None, tau=tau)[0].numpy()
        ref = _reference_field(x_n[0].numpy(), y_n[0].numpy(), tau)
        np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-9 * np.abs(ref).max())
    # the effective neighbour count: invariant to feature units, and wide at the reference's taus
    counts = {tau: effective_neighbours(x_n, y_n, tau).median().item() for tau in (0.02, 0.05, 0.2)}
    scaled = {tau: effective_neighbours(1000 * x, 1000 * y, tau).median().item() for tau in counts}
    assert counts == pytest.approx(scaled, rel=1e-6)
    assert counts[0.02] < counts[0.05] < counts[0.2]
    assert counts[0.02] > 2.5 and counts[0.2] > 100, counts  # 256 targets; not nearest-neighbour
    # the old scale on the same features: about one neighbour at the two colder taus
    d = torch.cdist(x_n, torch.cat([x_n, y_n], dim=-2))
    d[0, range(256), range(256)] = float("inf")
    old = {tau: torch.exp(-(torch.softmax(-d / tau, -1) * torch.log_softmax(-d / tau, -1).nan_to_num(neginf=0)).sum(-1)).median().item()
           for tau in counts}
    assert old[0.02] < 1.2 and old[0.05] < 2.0, old


ANGLES = torch.arange(8) * (2 * math.pi / 8)
CENTRES = 2.0 * torch.stack([ANGLES.cos(), ANGLES.sin()], 1)  # eight Gaussians on a circle, sd 0.1


def _real(n):
    return CENTRES[torch.randint(0, 8, (n,))] + 0.1 * torch.randn(n, 2)


def _mmd(a, b, bw=0.2):
    def k(u, v):
        return torch.exp(-torch.cdist(u, v).pow(2) / (2 * bw * bw)).mean()
    return (k(a, a) + k(b, b) - 2 * k(a, b)).item()


def _modes(samples):
    nearest = torch.cdist(samples, CENTRES).min(dim=1)
    on = nearest.values < 0.5
    return torch.bincount(nearest.indices[on], minlength=8).float() / len(samples), on.float().mean().item()


def test_the_field_carries_particles_onto_every_mode():
    """Particles moved by V alone (x <- x + step * V, in the loss's own units) reach the mixture:
    each of the eight modes ends with 1/8 of them, and the MMD to the target falls to noise level."""
    torch.manual_seed(0)
    loss_fn = DriftingLoss()
    x = torch.randn(512, 2)
    start = _mmd(x, _real(4000))
    for _ in range(250):
        x_n, v = loss_fn.field(x[None], _real(512)[None])
        x = x + 0.01 * v[0] * (x[None] / x_n).mean()
    share, on = _modes(x)
    assert ((share > 0.10) & (share < 0.15)).all(), share
    assert on > 0.85 and _mmd(x, _real(4000)) < 0.05 * start


def test_drift_loss_alone_trains_a_generator_onto_every_mode():
    """A small generator trained with the drifting loss only (no reconstruction term): every mode
    gets samples and the MMD to the target falls. A continuous map from noise cannot put all of its
    mass on eight separated modes, so the bar is lower than for free particles."""
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 128), torch.nn.SiLU(), torch.nn.Linear(128, 128), torch.nn.SiLU(),
                              torch.nn.Linear(128, 2))

    def gen(z):  # starts as N(0, I) in the plane, as the reference's toy cases do
        return z[:, :2] + mlp(z)

    opt = torch.optim.Adam(mlp.parameters(), lr=2e-3)
    loss_fn = DriftingLoss()
    with torch.no_grad():
        start = _mmd(gen(torch.randn(4000, 8)), _real(4000))
    for _ in range(600):
        opt.zero_grad()
        loss_fn(gen(torch.randn(256, 8))[None], _real(256)[None]).backward()
        opt.step()
    with torch.no_grad():
        samples = gen(torch.randn(4000, 8))
    share, on = _modes(samples)
    assert (share > 0.04).all(), share  # every mode covered (1/8 = 0.125 each when perfect)
    assert on > 0.5
    assert _mmd(samples, _real(4000)) < 0.7 * start


def test_spatial_tokens_drift_per_location_across_the_batch():
    """Generated volumes that hold the real features at the wrong places: pooled over locations the
    two sets are the same multiset (no drift to see), per location they differ. The drift must see
    it, as the reference computes the spatial drift per location across samples."""
    from ldmonai.gdm.objective import FeatureDriftLoss

    class Bank(torch.nn.Module):  # the spatial set only: the volume's own (B, L, C) tokens
        def forward(self, image):
            return {"spatial": image}

    torch.manual_seed(0)
    real = torch.randn(8, 16, 4) + torch.linspace(-3, 3, 16)[None, :, None]  # each location its own mean
    loss = FeatureDriftLoss(Bank(), max_tokens=10_000)
    loss(real.clone(), real)
    same = loss.drift.last_raw_rms.item()
    loss(real[:, torch.randperm(16)], real)  # every volume's features moved to other locations
    moved = loss.drift.last_raw_rms.item()
    assert moved > 2 * same, (same, moved)  # pooled, both are the same number
