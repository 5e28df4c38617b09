"""The non-learned reference of MRI-to-CT: an intensity mapping fitted on the training pairs.

Each normalised MR intensity bin maps to the median CT value of the training voxels inside
the mask that fall in it. It is the best any voxel-wise (context-free) mapping can do in
MAE, so a generator that does not beat it has learned nothing from anatomy; bone and air,
both dark on T1, are where it fails.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
from torch import nn

__all__ = ["IntensityMapping"]


class IntensityMapping(nn.Module):
    """A fitted look-up table from input intensity to target intensity.

    Args:
        bins: number of input intensity bins over ``value_range``.
        value_range: input range covered by the bins (inputs outside are clamped).

    ``fit(pairs)`` takes ``(input, target, mask)`` arrays; ``forward(x)`` maps a tensor of
    inputs ``(B, 1, *S)`` to the same shape.
    """

    def __init__(self, bins: int = 128, value_range: tuple[float, float] = (0.0, 1.0)) -> None:
        super().__init__()
        self.bins = bins
        self.lo, self.hi = value_range
        self.register_buffer("table", torch.zeros(bins))

    def fit(self, pairs: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray | None]]) -> "IntensityMapping":
        xs, ys = [], []
        for x, y, m in pairs:
            keep = np.ones(np.shape(x), bool) if m is None else np.asarray(m) > 0
            xs.append(np.asarray(x)[keep].ravel())
            ys.append(np.asarray(y)[keep].ravel())
        x, y = np.concatenate(xs), np.concatenate(ys)
        idx = self._index(x)
        table = np.full(self.bins, np.nan)
        for b in np.unique(idx):
            table[b] = np.median(y[idx == b])
        # empty bins take the nearest filled bin's value
        filled = np.flatnonzero(~np.isnan(table))
        table = table[filled[np.abs(np.arange(self.bins)[:, None] - filled[None]).argmin(1)]]
        self.table = torch.as_tensor(table, dtype=torch.float32)
        return self

    def _index(self, x):
        scaled = (x - self.lo) / (self.hi - self.lo) * self.bins
        if isinstance(x, torch.Tensor):
            return scaled.long().clamp(0, self.bins - 1)
        return np.clip(scaled.astype(np.int64), 0, self.bins - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table.to(x.device)[self._index(x)]
