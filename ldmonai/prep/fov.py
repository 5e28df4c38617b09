"""A robust field of view for head MRI: find the top of the head and drop the neck.

FSL's ``robustfov`` does this before brain extraction and registration, for the same reason: a
scan that runs from the vertex down through the neck has most of its tissue below the brain, so
an atlas fit initialised at the centre of gravity starts too low and stretches the brain mask
down the spinal canal (``docs/benchmarks.md``, "Preprocessing", shows it on a real head).

The steps, each an ITK operation on a 4 mm copy (so that it costs well under a second):

1. the head: a tenth of the 99th intensity percentile (``BinaryThreshold``; Otsu's threshold
   would separate the brain from the dark skull), then the largest connected component after a
   2-voxel opening (``BinaryMorphologicalOpening``), which removes noise and ghosting above the
   head, with its holes filled;
2. the superior axis: the image axis whose direction has the largest component along the
   patient's S-I axis (ITK's physical z, LPS), so sagittal, coronal and axial acquisitions in any
   orientation are read alike;
3. the top of the head: the most superior slice along that axis with head voxels in it;
4. the box: from ``margin_mm`` above the top down to ``extent_mm`` below it (FSL's default brain
   extent is 170 mm; the skull-stripper uses 150 mm, measured on real heads), the full extent
   along the other two axes.

The crop keeps the physical coordinates (``RegionOfInterest``), so anything computed on it can be
resampled back onto the full image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ldmonai.errors import LdmonaiError

_WORK_MM = 4.0


@dataclass
class HeadFOV:
    """The cropped image and where it lies in the input's index space (ITK order x, y, z)."""

    image: sitk.Image
    index: tuple[int, int, int]
    size: tuple[int, int, int]
    cropped_mm: float  # how much of the input the box leaves out below the head, in mm

    def region_mask(self, like: sitk.Image) -> sitk.Image:
        """A uint8 mask on ``like``'s grid (the input's): 1 inside the box."""
        mask = sitk.Image(like.GetSize(), sitk.sitkUInt8)
        mask.CopyInformation(like)
        inside = sitk.Image(self.size, sitk.sitkUInt8) + 1
        return sitk.Paste(mask, inside, self.size, [0, 0, 0], self.index)


def superior_axis(image: sitk.Image) -> tuple[int, int]:
    """``(axis, sign)``: the image axis closest to the patient's S-I direction, and +1 when the index
    grows towards superior (ITK's physical +z in LPS)."""
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)  # columns: axis directions
    z = direction[2, :]
    axis = int(np.argmax(np.abs(z)))
    return axis, (1 if z[axis] > 0 else -1)


def _head(image: sitk.Image) -> sitk.Image:
    """The head on a coarse grid: threshold, opening, largest component, holes filled (step 1)."""
    spacing = [max(s, _WORK_MM) for s in image.GetSpacing()]
    size = [max(1, int(round(n * s / w))) for n, s, w in zip(image.GetSize(), image.GetSpacing(), spacing)]
    coarse = sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), size, sitk.Transform(), sitk.sitkLinear,
                           image.GetOrigin(), spacing, image.GetDirection(), 0.0, sitk.sitkFloat32)
    # Otsu alone splits the brain from the darker skull, and its largest component can be the brain;
    # a tenth of the 99th percentile keeps scalp, skull marrow and brain in one piece and leaves the
    # air (noise) out.
    values = sitk.GetArrayViewFromImage(coarse)
    threshold = 0.1 * float(np.percentile(values, 99))
    head = sitk.BinaryThreshold(coarse, threshold, float(values.max()) + 1.0, 1, 0)
    head = sitk.BinaryMorphologicalOpening(head, [2, 2, 2], sitk.sitkBall)
    components = sitk.RelabelComponent(sitk.ConnectedComponent(head), sortByObjectSize=True)
    return sitk.BinaryFillhole(components == 1)


def head_fov(image: sitk.Image, extent_mm: float = 170.0, margin_mm: float = 15.0) -> HeadFOV:
    """Crop ``image`` to the head: ``margin_mm`` above its top to ``extent_mm`` below it (module docstring).

    An image that is already no taller than the box comes back whole.

    Raises:
        LdmonaiError: no head is found (an empty or constant image).
    """
    head = _head(image)
    array = sitk.GetArrayViewFromImage(head)  # numpy order: z, y, x
    if not array.any():
        raise LdmonaiError("no head found in the image (nothing above a tenth of its 99th percentile)",
                           fix="check that the image is a head MRI with its intensities intact")
    axis, sign = superior_axis(image)
    profile = array.any(axis=tuple(a for a in range(3) if a != 2 - axis))
    filled = np.nonzero(profile)[0]
    top_coarse = filled.max() if sign > 0 else filled.min()
    # the top slice's index on the input grid, through physical space
    point = head.TransformIndexToPhysicalPoint([int(top_coarse) if a == axis else 0 for a in range(3)])
    top = image.TransformPhysicalPointToContinuousIndex(point)[axis]
    step = image.GetSpacing()[axis]
    n = image.GetSize()[axis]
    upper = top + sign * margin_mm / step
    lower = top - sign * extent_mm / step
    lo, hi = sorted((lower, upper))
    lo, hi = max(0, int(np.floor(lo))), min(n, int(np.ceil(hi)) + 1)
    index = [0, 0, 0]
    size = list(image.GetSize())
    index[axis], size[axis] = lo, hi - lo
    below = (lo if sign > 0 else n - hi) * step
    cropped = sitk.RegionOfInterest(image, size, index)
    return HeadFOV(image=cropped, index=tuple(index), size=tuple(size), cropped_mm=float(below))


__all__ = ["HeadFOV", "head_fov", "superior_axis"]
