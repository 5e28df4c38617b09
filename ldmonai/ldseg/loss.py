"""LDSeg's one end-to-end objective: ``L = CE + 2 (1 - Dice) + lambda MSE(target, prediction)``.

The denoising term compares the denoiser's output with its target: ``z0`` for LDSeg's default
``prediction_type="sample"``, the noise ``eps`` otherwise (and for the pixel-space baseline); the
model names both ``noise`` and ``noise_pred`` in its training outputs, and the term is logged as
``train_noise``.

Each term is returned separately too, so TensorBoard shows which one moves. Terms whose
inputs a segmenter does not produce (no noise for the deterministic baseline, no logits
for the pixel-space diffusion baseline) are left out, so the same loss serves all three.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss


class SegmentationLoss:
    """Combine CE, soft Dice and noise MSE from a segmenter's ``training_outputs``.

    Args:
        ce_weight: weight of cross-entropy on the decoded logits.
        dice_weight: weight of ``1 - Dice`` (2 as published).
        noise_weight: lambda, weight of the denoising MSE.
        include_background: whether Dice counts class 0.
    """

    def __init__(
        self, ce_weight: float = 1.0, dice_weight: float = 2.0, noise_weight: float = 1.0, include_background: bool = True
    ) -> None:
        self.ce_weight = ce_weight
        self.dice_weight = dice_weight
        self.noise_weight = noise_weight
        self.dice = DiceLoss(include_background=include_background, to_onehot_y=True, softmax=True)

    def __call__(self, outputs: dict[str, torch.Tensor], label: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{"loss": total, "ce": ..., "dice": ..., "noise": ...}`` (present terms only).

        Args:
            outputs: ``logits`` ``(B, C, *S)`` and/or ``noise``, ``noise_pred``.
            label: ``(B, 1, *S)`` integer class ids.
        """
        terms: dict[str, torch.Tensor] = {}
        total = 0.0
        if "logits" in outputs:
            logits = outputs["logits"]
            terms["ce"] = F.cross_entropy(logits, label[:, 0].long())
            terms["dice"] = self.dice(logits, label)
            total = total + self.ce_weight * terms["ce"] + self.dice_weight * terms["dice"]
        if "noise_pred" in outputs:
            terms["noise"] = F.mse_loss(outputs["noise_pred"], outputs["noise"])
            total = total + self.noise_weight * terms["noise"]
        if not terms:
            raise ValueError("training outputs hold neither 'logits' nor 'noise_pred'; nothing to train on")
        terms["loss"] = total
        return terms
