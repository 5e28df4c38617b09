"""The drifting field V of Deng et al., "Generative Modeling via Drifting" (2026), Alg. 2.

V moves each generated sample toward real samples (y+) and away from the other generated
samples (y-). It is anti-symmetric in (y+, y-): swapping the two sets negates it, so it
vanishes when the generated and real distributions agree. Training regresses the features
of a generated sample onto ``stopgrad(phi(x) + V)``: the network, not an inference loop,
does the moving.

Not to be confused with LD's ``latent_drift`` (a scalar shift of a diffusion prior).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DriftingLoss", "drift_field", "normalize_features"]


def drift_field(
    x: torch.Tensor, y_pos: torch.Tensor, y_neg: torch.Tensor | None = None, tau: float = 0.05, mask_self: bool | None = None
) -> torch.Tensor:
    """One temperature of the drifting field.

    Args:
        x: generated samples ``(..., N, C)``; leading dims are independent sets.
        y_pos: real samples ``(..., P, C)``.
        y_neg: generated samples used as negatives ``(..., M, C)``; ``None`` means ``x``.
        tau: kernel temperature of ``k(x, y) = exp(-||x - y|| / tau)`` (plain L2 distance,
            not squared).
        mask_self: drop the pairs ``(x_i, y_neg_i)``; by default only when ``y_neg`` is ``x``,
            since a sample must not repel itself.

    Returns:
        V ``(..., N, C)``. The kernel is normalised by the geometric mean of a softmax over
        targets (each row) and a softmax over the batch (each column), and each side is
        cross-weighted by the other's total mass, ``W+ = A+ * sum(A-)`` and
        ``W- = A- * sum(A+)``, so the x terms cancel: ``V = W+ @ y+ - W- @ y-``.
    """
    if y_neg is None:
        y_neg = x
        mask_self = True if mask_self is None else mask_self
    num_pos = y_pos.shape[-2]
    logit_pos = -torch.cdist(x, y_pos) / tau
    logit_neg = -torch.cdist(x, y_neg) / tau
    if mask_self:
        if y_neg.shape[-2] != x.shape[-2]:
            raise ValueError(f"mask_self needs as many negatives as samples, got {y_neg.shape[-2]} and {x.shape[-2]}")
        eye = torch.eye(x.shape[-2], dtype=torch.bool, device=x.device)
        logit_neg = logit_neg.masked_fill(eye, float("-inf"))
    logit = torch.cat([logit_pos, logit_neg], dim=-1)
    # log-space geometric mean: exp((log_softmax_row + log_softmax_col) / 2)
    affinity = torch.exp(0.5 * (logit.log_softmax(dim=-1) + logit.log_softmax(dim=-2)))
    a_pos, a_neg = affinity[..., :num_pos], affinity[..., num_pos:]
    w_pos = a_pos * a_neg.sum(dim=-1, keepdim=True)
    w_neg = a_neg * a_pos.sum(dim=-1, keepdim=True)
    return w_pos @ y_pos - w_neg @ y_neg


def normalize_features(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale both sets by one constant so that the mean distance from ``x`` to ``y`` and to
    ``x`` is ``sqrt(C)``. The scale carries no gradient: it fixes units, it is not a target.

    Without it one temperature list cannot serve features whose magnitudes differ by orders
    (HU patches next to unit-variance network activations).
    """
    with torch.no_grad():
        dist = torch.cdist(x, torch.cat([y, x], dim=-2))
        n = x.shape[-2]
        # self-distances are zero and would bias the mean downward
        count = dist.shape[-1] * n - n
        mean = dist.sum(dim=(-1, -2), keepdim=True) / max(count, 1)
        scale = mean / (x.shape[-1] ** 0.5) + eps
    return x / scale, y / scale


class DriftingLoss(nn.Module):
    """``||phi(x) - stopgrad(phi(x) + V)||^2`` with V summed over temperatures.

    Features are normalised with :func:`normalize_features`, and each temperature's drift
    to unit RMS per element before the sum, so that every tau contributes on the same scale.

    Args:
        temperatures: the taus that are summed; Deng et al. use (0.02, 0.05, 0.2).
        eps: floor of the RMS, so that a vanishing drift is not blown up into noise.

    Shapes: ``x_feat`` ``(G, N, C)`` generated (with grad), ``y_feat`` ``(G, P, C)`` real.
    Returns a scalar; the mean squared drift per element, which is what the network is
    asked to remove.
    """

    def __init__(self, temperatures: Sequence[float] = (0.02, 0.05, 0.2), eps: float = 1e-4) -> None:
        super().__init__()
        if not temperatures or any(t <= 0 for t in temperatures):
            raise ValueError(f"temperatures must be positive, got {temperatures}")
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
            total = torch.zeros_like(xd)
            raw = []
            for tau in self.temperatures:
                v = drift_field(xd, y_n, None, tau)
                rms = v.pow(2).mean(dim=(-1, -2), keepdim=True).sqrt()
                raw.append(rms.mean())
                total = total + v / rms.clamp_min(self.eps)
            self.last_raw_rms = torch.stack(raw).mean()
        return x_n, total

    def forward(self, x_feat: torch.Tensor, y_feat: torch.Tensor) -> torch.Tensor:
        x_n, v = self.field(x_feat, y_feat)
        return F.mse_loss(x_n, (x_n + v).detach())
