"""GDM's training objective: feature-space drift plus masked HU fidelity, coordinated on the
generator's output.

The objective hands back a gradient for the output tensor instead of a loss, because the
coordination happens between two gradients on that tensor; the engine back-propagates it
through the generator once (``output.backward(gradient)``).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ldmonai.gdm.drift_field import DriftingLoss
from ldmonai.gdm.feature_bank import FeatureBank
from ldmonai.gdm.grad_coordination import coordinate_gradients
from ldmonai.gdm.hu import HU_MAX, HU_MIN

__all__ = ["FeatureDriftLoss", "GDMObjective", "masked_l1_hu"]

_HU_PER_UNIT = (HU_MAX - HU_MIN) / 2.0


def masked_l1_hu(output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute error in HU inside the mask, for unit-range ``(B, 1, *S)`` CT tensors."""
    err = (output - target).abs() * _HU_PER_UNIT
    if mask is None:
        return err.mean()
    mask = (mask > 0).to(err.dtype)
    return (err * mask).sum() / mask.sum().clamp_min(1.0)


class FeatureDriftLoss(nn.Module):
    """The drifting loss of every token set of a :class:`FeatureBank`, averaged.

    Generated and real tokens of one set are pooled over the batch and over locations into
    one distribution per set; ``global*`` sets (one token per volume) are matched over the
    batch and skipped when the batch holds a single volume, since one sample is no
    distribution. The ``spatial`` set keeps its positions: each location is its own
    distribution across the batch (the reference computes its drift per location across
    samples), so a generated volume is pulled toward what real volumes hold *at that place*;
    it too needs two or more volumes. Large pooled sets are subsampled to ``max_tokens``, at
    the same locations for both sides.

    Args:
        feature_bank: the bank; its encoder is frozen.
        temperatures: kernel temperatures summed in the drift.
        max_tokens: tokens per set at most (the kernel matrix is quadratic in it).
        distance_unit: see :class:`~ldmonai.gdm.drift_field.DriftingLoss` (``"mean"``, the reference).
    """

    def __init__(self, feature_bank: FeatureBank, temperatures: Sequence[float] = (0.02, 0.05, 0.2), max_tokens: int = 2048,
                 distance_unit: str = "mean") -> None:
        super().__init__()
        self.bank = feature_bank
        self.drift = DriftingLoss(temperatures, distance_unit=distance_unit)
        self.max_tokens = max_tokens

    def forward(self, generated: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x_bank = self.bank(generated)
        with torch.no_grad():
            y_bank = self.bank(real)
        losses, rms = {}, []
        for name, x in x_bank.items():
            y = y_bank[name]
            if name == "spatial":  # (B, L, C) -> L independent sets of B samples
                x, y = x.transpose(0, 1), y.transpose(0, 1)
            else:
                x, y = x.reshape(1, -1, x.shape[-1]), y.reshape(1, -1, y.shape[-1])
            if x.shape[1] < 2:
                continue
            if x.shape[1] > self.max_tokens:
                idx = torch.randperm(x.shape[1], device=x.device)[: self.max_tokens]
                x, y = x[:, idx], y[:, idx]
            losses[name] = self.drift(x, y)
            rms.append(self.drift.last_raw_rms)
        if not losses:
            raise ValueError("no token set has two or more tokens: use a batch of two or more volumes or larger patches")
        loss = torch.stack(list(losses.values())).mean()
        return loss, {"drift_rms": torch.stack(rms).mean(), **{f"drift_{k}": v.detach() for k, v in losses.items()}}


class GDMObjective(nn.Module):
    """Output-space gradient of ``drift_weight * drift + fidelity_weight * fidelity``.

    Args:
        drift_loss: a :class:`FeatureDriftLoss`; ``None`` (or ``drift_weight=0``) gives the
            supervised regression baseline with the same code path.
        drift_weight: weight of the drift loss.
        fidelity_weight: weight of the masked L1 in HU; the default 1/1000 makes a 1000 HU
            mean error weigh 1.
        coordinate: project conflicting gradients (:func:`coordinate_gradients`); ``False``
            is the ablation that simply adds them.
        mode: which gradient is projected, see :func:`coordinate_gradients`.

    Call: ``(output, target, mask)``, unit-range ``(B, 1, *S)`` tensors, ``output`` from the
    generator. Returns ``(gradient for output, terms)``; ``terms["loss"]`` is the weighted
    sum for logs, ``terms["mae_hu"]`` the fidelity in HU.
    """

    def __init__(
        self,
        drift_loss: FeatureDriftLoss | None = None,
        drift_weight: float = 1.0,
        fidelity_weight: float = 1e-3,
        coordinate: bool = True,
        mode: str = "project_drift",
    ) -> None:
        super().__init__()
        self.drift_loss = drift_loss
        self.drift_weight = drift_weight if drift_loss is not None else 0.0
        self.fidelity_weight = fidelity_weight
        self.coordinate = coordinate
        self.mode = mode

    def forward(self, output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None):
        leaf = output.detach().requires_grad_(True)
        with torch.enable_grad():
            fidelity = masked_l1_hu(leaf, target, mask)
            (g_fid,) = torch.autograd.grad(self.fidelity_weight * fidelity, leaf)
            terms = {"mae_hu": fidelity.detach()}
            if self.drift_weight == 0:
                terms["loss"] = self.fidelity_weight * fidelity.detach()
                return g_fid, terms
            drift, info = self.drift_loss(leaf, target)
            (g_drift,) = torch.autograd.grad(self.drift_weight * drift, leaf)
        coordinated, stats = coordinate_gradients(g_fid, g_drift, self.mode)
        # the ablation still logs how often the two gradients conflict
        grad = coordinated if self.coordinate else g_fid + g_drift
        terms.update(info)
        terms.update(
            drift=drift.detach(),
            cosine=stats["cosine"].mean(),
            conflict=stats["conflict"],
            loss=(self.fidelity_weight * fidelity + self.drift_weight * drift).detach(),
        )
        return grad, terms
