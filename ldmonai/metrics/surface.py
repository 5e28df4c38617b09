"""Hausdorff and surface distances in millimetres, on each case's own voxel size.

MONAI's ``HausdorffDistance`` and ``SurfaceDistance`` handlers call their metric with
``(y_pred, y)`` only, so the distances come out in voxels. The metrics take a ``spacing``
argument; these handlers read it from each prediction's MetaTensor (``pixdim``, what
``LoadImaged`` recorded from the file), so a 2 mm and a 0.5 mm case are scored alike.
"""

from __future__ import annotations

from typing import Sequence

import torch
from monai.data import MetaTensor
from monai.handlers import HausdorffDistance, SurfaceDistance


def voxel_spacing(batch: Sequence[torch.Tensor] | torch.Tensor) -> list[list[float]] | None:
    """Per-item voxel sizes in mm from MetaTensor ``pixdim``, or None (voxel units) when absent."""
    items = list(batch) if isinstance(batch, (list, tuple)) else list(torch.unbind(batch)) if batch.ndim else []
    spacing = []
    for item in items:
        if not isinstance(item, MetaTensor) or "pixdim" not in item.meta:
            return None
        dims = item.ndim - 1  # channel first
        spacing.append([float(v) for v in torch.as_tensor(item.meta["pixdim"]).flatten()[1 : dims + 1]])
    return spacing or None


class _InMillimetres:
    def update(self, output: Sequence[torch.Tensor]) -> None:
        if len(output) != 2:
            raise ValueError(f"output must have length 2, got {len(output)}.")
        y_pred, y = output
        spacing = voxel_spacing(y_pred)
        if spacing is None:
            self.metric_fn(y_pred, y)
        else:
            self.metric_fn(y_pred, y, spacing=spacing)


class HausdorffDistanceMM(_InMillimetres, HausdorffDistance):
    """MONAI's ``HausdorffDistance`` handler in mm (same arguments)."""


class SurfaceDistanceMM(_InMillimetres, SurfaceDistance):
    """MONAI's ``SurfaceDistance`` handler in mm (same arguments)."""
