"""Residual generators: a network that predicts a correction to its own input."""

from __future__ import annotations

import torch
from torch import nn


class ResidualGenerator(nn.Module):
    """``y = x[:, :out_channels] + gate * network(x)``, with ``gate`` learnable and zero at the start.

    Where the input is already a fair estimate of the target, as an FBP reconstruction is of
    the full-view CT (FBPConvNet, Jin et al., 2017), learning the artefact is easier than
    learning the image. Starting the gate at zero (ReZero, Bachlechner et al., 2021) makes
    the untrained generator return its input exactly, so training starts from the baseline
    instead of from a random image and a run that learns nothing cannot fall below it.

    Args:
        network: maps ``(B, C_in, *S)`` to ``(B, C_out, *S)`` with ``C_out <= C_in``.
        gate_init: initial value of the scalar gate.

    Shapes:
        ``x``: ``(B, C_in, *S)``; output ``(B, C_out, *S)``: the first ``C_out`` input
        channels plus the gated correction.
    """

    def __init__(self, network: nn.Module, gate_init: float = 0.0) -> None:
        super().__init__()
        self.network = network
        self.gate = nn.Parameter(torch.tensor(float(gate_init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        correction = self.network(x)
        return x[:, : correction.shape[1]] + self.gate * correction
