"""Intensity normalisation: z-score within a mask, percentile clipping, and CT windowing."""

from __future__ import annotations

import os

import numpy as np
import SimpleITK as sitk

from ldmonai.errors import LdmonaiError
from ldmonai.prep.image import require_nonempty, require_same_space

# (centre, width) in HU of the windows radiologists use.
CT_WINDOWS = {"brain": (40.0, 80.0), "subdural": (75.0, 215.0), "soft_tissue": (40.0, 400.0),
              "lung": (-600.0, 1500.0), "bone": (400.0, 1800.0), "abdomen": (50.0, 400.0)}


def _like(values: np.ndarray, image: sitk.Image) -> sitk.Image:
    out = sitk.GetImageFromArray(values.astype(np.float32))
    out.CopyInformation(image)
    return out


def zscore(image: sitk.Image, mask: sitk.Image | None = None, case: str | os.PathLike = "image") -> sitk.Image:
    """(x - mean) / std, with the statistics taken inside ``mask`` (default: non-zero voxels).

    Voxels outside the mask are set to 0, so a stripped brain stays on a zero background.
    """
    array = sitk.GetArrayFromImage(image).astype(np.float64)
    if mask is None:
        inside = array != 0
    else:
        require_same_space(image, mask, case, "normalisation mask")
        inside = sitk.GetArrayViewFromImage(mask) > 0
    if not inside.any():
        require_nonempty(sitk.GetImageFromArray(inside.astype(np.uint8)), case, "normalisation mask")
    values = array[inside]
    std = values.std()
    if std == 0:
        raise LdmonaiError("intensities inside the mask are constant, so they cannot be z-scored", case,
                           "check the mask and the image")
    out = np.where(inside, (array - values.mean()) / std, 0.0)
    return _like(out, image)


def percentile_clip(image: sitk.Image, low: float = 0.5, high: float = 99.5, rescale: bool = True,
                    mask: sitk.Image | None = None, case: str | os.PathLike = "image") -> sitk.Image:
    """Clip to the ``low``..``high`` percentiles (inside ``mask`` if given) and optionally map them to 0..1."""
    if not 0 <= low < high <= 100:
        raise LdmonaiError(f"percentiles must satisfy 0 <= low < high <= 100, got {low}, {high}", case)
    array = sitk.GetArrayFromImage(image).astype(np.float64)
    if mask is not None:
        require_same_space(image, mask, case, "normalisation mask")
        sample = array[sitk.GetArrayViewFromImage(mask) > 0]
    else:
        sample = array.ravel()
    lo, hi = np.percentile(sample, [low, high])
    out = np.clip(array, lo, hi)
    if rescale:
        out = (out - lo) / (hi - lo) if hi > lo else np.zeros_like(out)
    return _like(out, image)


def ct_window(image: sitk.Image, window: str | None = "soft_tissue", center: float | None = None,
              width: float | None = None, rescale: bool = True) -> sitk.Image:
    """Clip HU to a window given by name (``CT_WINDOWS``) or by ``center``/``width``; 0..1 if ``rescale``."""
    if center is None or width is None:
        if window not in CT_WINDOWS:
            raise LdmonaiError(f"unknown CT window {window!r}", fix=f"use one of {', '.join(CT_WINDOWS)} or center and width")
        center, width = CT_WINDOWS[window]
    if width <= 0:
        raise LdmonaiError(f"CT window width must be positive, got {width}")
    lo, hi = center - width / 2.0, center + width / 2.0
    array = np.clip(sitk.GetArrayFromImage(image).astype(np.float64), lo, hi)
    return _like((array - lo) / (hi - lo) if rescale else array, image)
