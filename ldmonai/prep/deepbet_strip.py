"""Learned skull-stripping with deepbet (Fisch et al., "deepbet: Fast brain extraction of T1-weighted
MRI using Convolutional Neural Networks", 2024), run through torch on CPU or GPU.

deepbet ships its two TorchScript networks in its wheel (MIT licence, nothing is downloaded): a
network on a 128^3 copy finds the brain's bounding box, and a network on that box at 256^3
segments the brain. ldmonai hands it the subject in RAS orientation (the orientation it was
trained in), keeps voxels above ``threshold``, applies deepbet's own post-processing (largest
component, holes filled) and puts the mask back on the subject's own grid.

Why a learned backend beside the atlas: it needs no registration, so a head that the atlas does
not fit well (a low fit correlation) is not a problem for it, and it runs in seconds
(``docs/benchmarks.md``, "Preprocessing").
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ldmonai.errors import LdmonaiError

_MODEL = None


def deepbet_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("deepbet") is not None


def _model():
    """deepbet's networks, loaded once per process (TorchScript from its wheel)."""
    global _MODEL
    if _MODEL is None:
        try:
            import torch
            from deepbet import BrainExtraction
        except ImportError:
            raise LdmonaiError("the deepbet skull-stripping backend is not installed",
                               fix='pip install "ldmonai[deepbet]" (it brings torch and deepbet\'s weights), '
                                   "or use method='atlas'") from None
        _MODEL = BrainExtraction(no_gpu=not torch.cuda.is_available())
    return _MODEL


def deepbet_mask(image: sitk.Image, threshold: float = 0.5) -> sitk.Image:
    """The brain mask of a T1 head (uint8, on ``image``'s grid) by deepbet.

    Shapes: any 3D image; internally ``(R, A, S)`` float32 as deepbet reads NIfTI in
    closest-canonical orientation.
    """
    import torch

    bet = _model()
    ras = sitk.DICOMOrient(sitk.Cast(image, sitk.sitkFloat32), "RAS")  # ITK's 'RAS': index axes grow to R, A, S
    x = np.ascontiguousarray(sitk.GetArrayFromImage(ras).transpose(2, 1, 0))
    with torch.no_grad():
        probability = bet.run_model(x.copy())
    mask = bet.postprocess(probability > threshold)
    out = sitk.GetImageFromArray(np.ascontiguousarray(mask.transpose(2, 1, 0)).astype(np.uint8))
    out.CopyInformation(ras)
    return sitk.Resample(out, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


__all__ = ["deepbet_available", "deepbet_mask"]
