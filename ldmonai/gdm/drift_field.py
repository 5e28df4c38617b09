"""The drifting field V of Deng et al., "Generative Modeling via Drifting" (2026), Alg. 2.

V moves each generated sample toward real samples (y+) and away from the other generated
samples (y-). It is anti-symmetric in (y+, y-): swapping the two sets negates it, so it
vanishes when the generated and real distributions agree. Training regresses the features
of a generated sample onto ``stopgrad(phi(x) + V)``: the network, not an inference loop,
does the moving.

The equations, each tied to the authors' code (lambertae/drifting, ``drift_loss.py`` at
commit accd0cf; line numbers there). For generated ``x_i`` (N of them, C channels) and targets
``t_j`` = the generated samples as negatives, then the real samples:

1. ``d_ij = ||x_i - t_j||``; the distance unit ``s = mean_ij d_ij`` over the whole matrix,
   self-pairs included (l. 70). :func:`distance_scale`.
2. Coordinates are divided by ``s / sqrt(C)`` so that distances have mean ``sqrt(C)``
   (l. 73). :func:`normalize_features`.
3. The kernel sees the *unit-mean* distance ``d_ij / s`` (l. 78), with the pair ``(x_i, x_i)``
   pushed far away so that a sample never repels itself (l. 81-85):
   ``logit_ij = -(d_ij / s) / tau`` (l. 91). The temperature is therefore relative to the
   mean distance, whatever C and the feature units are; dividing a distance of mean ``sqrt(C)``
   by tau instead (ldmonai before 2026-12-03) is a temperature ``sqrt(C)`` times colder, which
   at 64 to 128 channels leaves each sample about one neighbour.
4. ``A_ij = sqrt(softmax_j(logit)_ij * softmax_i(logit)_ij)``: the geometric mean of the
   normalisations over targets and over samples (l. 93-95), computed in log space. One
   departure: the reference floors the product at 1e-6 (every pair keeps an affinity of at
   least 1e-3), which keeps its ``sqrt`` away from 0. ldmonai computes V without gradients,
   so it needs no floor, and measured that the floor changes the method: with 512 particles
   moved by V toward 8 Gaussians on a circle (1024 targets per row), the floor's uniform
   mass outweighs the kernel and half the particles herd into one mode (MMD 0.44 after 2000
   steps); without it they cover all eight evenly (MMD 0.0016). The feature sets here hold up to
   2048 tokens, where the floor would dominate even more.
5. ``W+_ij = A+_ij * sum_k A-_ik`` and ``W-_ij = A-_ij * sum_k A+_ik`` (l. 104-106), so that
   ``V_i = sum_j W+_ij y+_j - sum_j W-_ij y-_j`` (the ``x_i`` terms cancel, l. 110-113).
   :func:`drift_field`.
6. Each temperature's V is divided by its RMS over all elements before the temperatures are
   summed (l. 115-119), and the loss is ``mean((x - stopgrad(x + V))^2)`` in the normalised
   coordinates (l. 129-131). :class:`DriftingLoss`.

Leading dimensions are independent sets (for example one set per spatial location); steps
1 and 6 pool over all of them, as the reference pools over its batch.

Not to be confused with LD's ``latent_drift`` (a scalar shift of a diffusion prior).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DriftingLoss", "distance_scale", "drift_field", "effective_neighbours", "normalize_features"]

def _targets(x: torch.Tensor, y_pos: torch.Tensor, y_neg: torch.Tensor | None) -> tuple[torch.Tensor, bool]:
    if y_neg is None:
        return torch.cat([x, y_pos], dim=-2), True
    return torch.cat([y_neg, y_pos], dim=-2), False


def distance_scale(x: torch.Tensor, y_pos: torch.Tensor, y_neg: torch.Tensor | None = None) -> torch.Tensor:
    """Mean distance from the generated samples to every target (negatives, self-pairs included,
    then positives), over all sets: the reference's unit (step 1). A scalar tensor, no gradient."""
    with torch.no_grad():
        targets, _ = _targets(x, y_pos, y_neg)
        return torch.cdist(x, targets).mean().clamp_min(1e-12)


def _logits(x, y_pos, y_neg, tau, scale, mask_self):
    targets, is_self = _targets(x, y_pos, y_neg)
    mask_self = is_self if mask_self is None else mask_self
    n_neg = targets.shape[-2] - y_pos.shape[-2]
    scale = distance_scale(x, y_pos, y_neg) if scale is None else scale
    logit = -torch.cdist(x, targets) / (scale * tau)
    if mask_self:
        if n_neg != x.shape[-2]:
            raise ValueError(f"mask_self needs as many negatives as samples, got {n_neg} and {x.shape[-2]}")
        eye = torch.zeros(logit.shape[-2:], dtype=torch.bool, device=x.device)
        eye[:, :n_neg] = torch.eye(n_neg, dtype=torch.bool, device=x.device)
        logit = logit.masked_fill(eye, float("-inf"))
    return logit, targets, n_neg


def drift_field(
    x: torch.Tensor, y_pos: torch.Tensor, y_neg: torch.Tensor | None = None, tau: float = 0.05,
    mask_self: bool | None = None, scale: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """One temperature of the drifting field (steps 3 to 5 of the module docstring).

    Args:
        x: generated samples ``(..., N, C)``; leading dims are independent sets.
        y_pos: real samples ``(..., P, C)``.
        y_neg: generated samples used as negatives ``(..., M, C)``; ``None`` means ``x``.
        tau: kernel temperature, relative to the distance unit: ``k = exp(-(d / scale) / tau)``.
        mask_self: drop the pairs ``(x_i, y_neg_i)``; by default only when ``y_neg`` is ``x``.
        scale: the distance unit; default :func:`distance_scale` of these sets.

    Returns:
        V ``(..., N, C)``, in the units of ``x``.
    """
    logit, targets, n_neg = _logits(x, y_pos, y_neg, tau, scale, mask_self)
    affinity = torch.exp(0.5 * (logit.log_softmax(dim=-1) + logit.log_softmax(dim=-2)))  # no floor: step 4
    a_neg, a_pos = affinity[..., :n_neg], affinity[..., n_neg:]
    w_pos = a_pos * a_neg.sum(dim=-1, keepdim=True)
    w_neg = a_neg * a_pos.sum(dim=-1, keepdim=True)
    return w_pos @ targets[..., n_neg:, :] - w_neg @ targets[..., :n_neg, :]


def effective_neighbours(x: torch.Tensor, y_pos: torch.Tensor, tau: float, y_neg: torch.Tensor | None = None,
                         scale: torch.Tensor | float | None = None) -> torch.Tensor:
    """Perplexity ``exp(H)`` of each sample's kernel over the targets, ``(..., N)``: how many
    targets a sample effectively attends to at ``tau`` (1 = nearest neighbour only)."""
    logit, _, _ = _logits(x, y_pos, y_neg, tau, scale, None)
    logp = logit.log_softmax(dim=-1)
    entropy = -(logp.exp() * logp.nan_to_num(neginf=0.0)).sum(dim=-1)
    return entropy.exp()


def normalize_features(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale both sets by one constant so that the mean distance from ``x`` to its targets
    (``x`` itself, then ``y``) is ``sqrt(C)`` (step 2). The scale carries no gradient: it fixes
    units, it is not a target.

    Without it one temperature list cannot serve features whose magnitudes differ by orders
    (HU patches next to unit-variance network activations).
    """
    scale = distance_scale(x, y) / (x.shape[-1] ** 0.5) + eps
    return x / scale, y / scale


class DriftingLoss(nn.Module):
    """``||phi(x) - stopgrad(phi(x) + V)||^2`` with V summed over temperatures (step 6).

    Features are normalised with :func:`normalize_features`, and each temperature's drift
    to unit RMS (over all elements of all sets) before the sum, so that every tau contributes
    on the same scale.

    Args:
        temperatures: the taus that are summed, relative to the mean distance; Deng et al. use
            (0.02, 0.05, 0.2).
        eps: floor of the RMS, so that a vanishing drift is not blown up into noise.
        distance_unit: ``"mean"`` (the reference: the kernel sees ``d / mean d``) or
            ``"sqrt_channels"``, ldmonai's kernel before 2026-12-03 (the kernel sees the normalised
            distance of mean ``sqrt(C)``, a temperature ``sqrt(C)`` times colder). The second exists
            only so that ``benchmarks/gdm.py --ablation`` can measure what the fix changed.

    Shapes: ``x_feat`` ``(G, N, C)`` generated (with grad), ``y_feat`` ``(G, P, C)`` real; the G
    sets are independent. Returns a scalar; the mean squared drift per element, which is what
    the network is asked to remove.
    """

    def __init__(self, temperatures: Sequence[float] = (0.02, 0.05, 0.2), eps: float = 1e-4,
                 distance_unit: str = "mean") -> None:
        super().__init__()
        if not temperatures or any(t <= 0 for t in temperatures):
            raise ValueError(f"temperatures must be positive, got {temperatures}")
        if distance_unit not in ("mean", "sqrt_channels"):
            raise ValueError(f"distance_unit must be 'mean' or 'sqrt_channels', got {distance_unit!r}")
        self.distance_unit = distance_unit
        self.temperatures = tuple(float(t) for t in temperatures)
        self.eps = eps
        # The loss value is ~constant by construction (unit-RMS drift); the raw RMS before
        # normalisation is what shows the two distributions converging, so it is kept for logs.
        self.last_raw_rms = torch.tensor(0.0)

    def field(self, x_feat: torch.Tensor, y_feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The normalised features of ``x`` and the summed, per-tau unit-RMS drift V."""
        x_n, y_n = normalize_features(x_feat, y_feat.detach())
        with torch.no_grad():
            xd = x_n.detach()
            scale = distance_scale(xd, y_n) if self.distance_unit == "mean" else 1.0
            total = torch.zeros_like(xd)
            raw = []
            for tau in self.temperatures:
                v = drift_field(xd, y_n, None, tau, scale=scale)
                rms = v.pow(2).mean().sqrt()
                raw.append(rms)
                total = total + v / rms.clamp_min(self.eps)
            self.last_raw_rms = torch.stack(raw).mean()
        return x_n, total

    def forward(self, x_feat: torch.Tensor, y_feat: torch.Tensor) -> torch.Tensor:
        x_n, v = self.field(x_feat, y_feat)
        return F.mse_loss(x_n, (x_n + v).detach())
