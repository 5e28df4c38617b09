"""Reading, checking and writing the images that every preprocessing step works on.

Steps work on SimpleITK images because they carry the physical space (origin, spacing,
direction) with the voxels, which is what keeps an output on its input's affine in 3D Slicer
and ITK-SNAP. Every check raises :class:`~ldmonai.errors.LdmonaiError` naming the case and
the fix, before ITK can fail somewhere deep with a message about buffers.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ldmonai.errors import LdmonaiError
from ldmonai.io.atomic import atomic_path


def read_image(path: str | os.PathLike, pixel_type: int = sitk.sitkFloat32, label: bool = False) -> sitk.Image:
    """Read a NIfTI/NRRD/MHA/PNG image and check it can be processed.

    A trailing singleton 4th axis (common in NIfTI written by SPM and ROBEX) is dropped.

    Args:
        path: image file.
        pixel_type: SimpleITK pixel type to cast to (float32 for intensities).
        label: read as an integer label map instead (keeps label values exactly).

    Raises:
        LdmonaiError: the file is missing, unreadable, empty, or holds NaN/infinite values.
    """
    path = Path(path)
    if not path.is_file():
        raise LdmonaiError("image file not found", path, "check the path")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[-1][:200]
        raise LdmonaiError(f"cannot read image ({reason})", path,
                           "check that it is a complete NIfTI, NRRD, MHA or PNG file") from None
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    if image.GetNumberOfComponentsPerPixel() > 1 and image.GetDimension() == 2:
        image = sitk.VectorIndexSelectionCast(image, 0)  # RGB-encoded grey PNG: take one channel
    if any(s == 0 for s in image.GetSize()):
        raise LdmonaiError("image is empty", path, "re-export the image")
    if label:
        array = sitk.GetArrayViewFromImage(image)
        if np.issubdtype(array.dtype, np.floating):
            if not np.isfinite(array).all() or not np.array_equal(array, np.round(array)):
                raise LdmonaiError("label map holds non-integer values", path, "pass an integer label map")
        return _cast(image, sitk.sitkInt32)
    image = _cast(image, pixel_type)
    require_finite(image, path)
    if path.name.lower().endswith((".nii", ".nii.gz")):
        # ITK's NIfTI reader turns NaN voxels into 0 without a word; a volume with NaN is broken
        # data, and silently zero-filling it would hide that, so check the file itself.
        import nibabel as nib

        try:
            data = np.asanyarray(nib.load(str(path)).dataobj)
        except (EOFError, OSError, ValueError) as err:
            # ITK reads a truncated .nii.gz without a word (the missing voxels become 0); the
            # check of the file itself is what finds it.
            raise LdmonaiError(f"corrupt or truncated file ({type(err).__name__}: {str(err).strip()[:120]})", path,
                               "re-export or re-copy the image; the file ends before its voxel data does") from None
        if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
            raise LdmonaiError(f"image holds {int((~np.isfinite(data)).sum())} NaN or infinite voxels", path,
                               "fix the source volume (or re-convert it); preprocessing will not guess values")
    return image


def _cast(image: sitk.Image, pixel_type: int) -> sitk.Image:
    if image.GetDimension() <= 3:
        return sitk.Cast(image, pixel_type)
    # SimpleITK's Cast is not built for 4D images of every type (fMRI, DWI series); numpy is.
    dtype = sitk.GetArrayViewFromImage(sitk.Image([1] * 3, pixel_type)).dtype
    out = sitk.GetImageFromArray(sitk.GetArrayViewFromImage(image).astype(dtype), isVector=False)
    out.CopyInformation(image)
    return out


def require_finite(image: sitk.Image, case: str | os.PathLike) -> None:
    """Raise if ``image`` holds NaN or infinite values."""
    array = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise LdmonaiError(f"image holds {bad} NaN or infinite voxels", case,
                           "fix the source volume (or re-convert it); preprocessing will not guess values")


def require_dims(image: sitk.Image, dims: int, step: str, case: str | os.PathLike) -> None:
    """Raise if ``image`` is not ``dims``-D: e.g. a 2D slice given to skull-stripping."""
    if image.GetDimension() != dims:
        raise LdmonaiError(f"'{step}' needs a {dims}D image but this one is {image.GetDimension()}D "
                           f"(size {list(image.GetSize())})", case,
                           f"give '{step}' {dims}D volumes, or drop it from the pipeline for this data")


def require_nonempty(mask: sitk.Image, case: str | os.PathLike, what: str = "mask") -> None:
    """Raise if a binary mask has no foreground voxel."""
    if not sitk.GetArrayViewFromImage(mask).any():
        raise LdmonaiError(f"{what} is empty (no non-zero voxel)", case,
                           f"check the {what}; an empty {what} would make every later step meaningless")


def same_space(a: sitk.Image, b: sitk.Image, tol: float = 1e-3) -> bool:
    """True when ``a`` and ``b`` share size, spacing, origin and direction (within ``tol`` mm)."""
    return (a.GetDimension() == b.GetDimension() and a.GetSize() == b.GetSize()
            and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=tol))


def require_same_space(image: sitk.Image, other: sitk.Image, case: str | os.PathLike, what: str) -> None:
    """Raise if ``other`` (a mask or label map) is not on ``image``'s voxel grid."""
    if not same_space(image, other):
        raise LdmonaiError(
            f"{what} is not in the image's physical space: size {list(other.GetSize())} vs {list(image.GetSize())}, "
            f"spacing {np.round(other.GetSpacing(), 3).tolist()} vs {np.round(image.GetSpacing(), 3).tolist()}, "
            f"origin {np.round(other.GetOrigin(), 2).tolist()} vs {np.round(image.GetOrigin(), 2).tolist()}",
            case, f"resample the {what} onto the image grid first (or pass the {what} that belongs to this image)")


def write_image(image: sitk.Image, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write ``image`` atomically (temporary name, then rename) and return the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), compress)
    return path


def to_itk(image: sitk.Image, pixel_type: int = sitk.sitkFloat32):
    """The same image as an ``itk.Image`` (float32 voxels by default; geometry copied)."""
    import itk

    out = itk.image_from_array(sitk.GetArrayFromImage(sitk.Cast(image, pixel_type)))
    out.SetOrigin(image.GetOrigin())
    out.SetSpacing(image.GetSpacing())
    out.SetDirection(itk.matrix_from_array(np.array(image.GetDirection()).reshape(image.GetDimension(), -1)))
    return out


def from_itk(image, reference: sitk.Image) -> sitk.Image:
    """An ``itk.Image`` on ``reference``'s grid, back as a SimpleITK image."""
    import itk

    out = sitk.GetImageFromArray(np.asarray(itk.array_from_image(image)))
    out.CopyInformation(reference)
    return out
