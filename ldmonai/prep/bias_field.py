"""N4 bias field correction (Tustison et al., IEEE TMI 2010) with SimpleITK.

The field is fitted on a copy shrunk by ``shrink`` (it is smooth, so little is lost and the
fit is shrink^3 times cheaper) and then evaluated on the full-resolution grid, as ANTs'
``N4BiasFieldCorrection -s`` does.
"""

from __future__ import annotations

import os

import numpy as np
import SimpleITK as sitk

from ldmonai.prep.image import require_finite, require_nonempty, require_same_space


def otsu_head_mask(image: sitk.Image) -> sitk.Image:
    """Foreground (head) mask by Otsu's threshold: where N4 fits the field."""
    return sitk.Cast(sitk.OtsuThreshold(image, 0, 1, 200), sitk.sitkUInt8)


def n4_bias_correct(image: sitk.Image, mask: sitk.Image | None = None, shrink: int = 4,
                    iterations=(50, 50, 30), case: str | os.PathLike = "image") -> tuple[sitk.Image, sitk.Image]:
    """Correct ``image`` for a smooth multiplicative bias field.

    Args:
        image: 2D or 3D intensity image (MRI).
        mask: where to fit (default: Otsu foreground).
        shrink: fit on a grid this many times coarser per axis.
        iterations: iterations per fitting level (the number of levels is its length).

    Returns:
        ``(corrected, bias_field)`` on ``image``'s grid; ``corrected = image / bias_field``.
    """
    require_finite(image, case)
    image = sitk.Cast(image, sitk.sitkFloat32)
    mask = otsu_head_mask(image) if mask is None else sitk.Cast(mask > 0, sitk.sitkUInt8)
    require_same_space(image, mask, case, "N4 mask")
    require_nonempty(mask, case, "N4 mask")
    # N4 works on log intensities: shift so that every masked voxel is positive.
    values = sitk.GetArrayViewFromImage(image)[sitk.GetArrayViewFromImage(mask) > 0]
    shift = float(max(0.0, 1.0 - values.min()))
    work = image + shift if shift else image
    factors = [max(1, int(shrink))] * image.GetDimension()
    small = sitk.Shrink(work, factors)
    small_mask = sitk.Shrink(mask, factors)
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations([int(i) for i in iterations])
    n4.Execute(small, small_mask)
    log_field = n4.GetLogBiasFieldAsImage(work)
    field = sitk.Exp(log_field)
    corrected = sitk.Cast(work / field - shift, sitk.sitkFloat32)
    corrected.CopyInformation(image)
    return corrected, sitk.Cast(field, sitk.sitkFloat32)


def coefficient_of_variation(image: sitk.Image, mask: sitk.Image) -> float:
    """std/mean of ``image`` inside ``mask``: bias correction should lower it within one tissue."""
    values = sitk.GetArrayViewFromImage(image)[sitk.GetArrayViewFromImage(mask) > 0].astype(np.float64)
    return float(values.std() / values.mean())
