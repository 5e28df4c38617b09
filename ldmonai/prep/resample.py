"""Orientation and voxel size: put every volume in one orientation and spacing.

Orientation codes follow NIfTI/nibabel: ``RAS`` means the first axis points to the subject's
Right, the second Anterior, the third Superior (what ``nibabel.aff2axcodes`` prints), the
same as SimpleITK's ``DICOMOrient`` codes. Reorienting only permutes and flips axes: no
interpolation, and the physical position of every voxel stays where it was.
"""

from __future__ import annotations

import os

import numpy as np
import SimpleITK as sitk

from ldmonai.errors import LdmonaiError
from ldmonai.prep.registration import INTERPOLATORS


def reorient(image: sitk.Image, orientation: str = "RAS") -> sitk.Image:
    """Permute and flip axes so that they point along ``orientation`` (3D only; 2D is returned as is)."""
    code = orientation.upper()
    if image.GetDimension() != 3:
        return image
    if sorted(code.replace("L", "R").replace("P", "A").replace("I", "S")) != ["A", "R", "S"] or len(code) != 3:
        raise LdmonaiError(f"bad orientation code {orientation!r}", fix="use three letters, one of R/L, A/P, S/I each, e.g. RAS")
    return sitk.DICOMOrient(image, code)


def resample_to_spacing(image: sitk.Image, spacing, interpolator: str = "linear",
                        case: str | os.PathLike = "image") -> sitk.Image:
    """Resample to voxel ``spacing`` (mm, one number or one per axis) over the same field of view.

    Use ``interpolator="nearest"`` for label maps. Anti-aliasing: when a voxel gets larger,
    the image is first smoothed with a Gaussian of half the new spacing, so that downsampled
    images do not alias.
    """
    dims = image.GetDimension()
    spacing = np.broadcast_to(np.asarray(spacing, dtype=float), (dims,))
    if (spacing <= 0).any():
        raise LdmonaiError(f"spacing must be positive, got {spacing.tolist()}", case, "pass e.g. 1.0 or [1, 1, 1.5]")
    if interpolator not in INTERPOLATORS:
        raise LdmonaiError(f"unknown interpolator {interpolator!r}", case, f"use one of {', '.join(INTERPOLATORS)}")
    old_spacing = np.array(image.GetSpacing())
    size = np.maximum(1, np.round(np.array(image.GetSize()) * old_spacing / spacing)).astype(int)
    # Keep the field of view: the first voxel's outer edge stays put.
    direction = np.array(image.GetDirection()).reshape(dims, dims)
    origin = np.array(image.GetOrigin()) + direction @ ((spacing - old_spacing) / 2.0)
    source = image
    if interpolator != "nearest" and (spacing > old_spacing * 1.01).any():
        sigma = np.where(spacing > old_spacing, spacing / 2.0, 0.0)
        floating = sitk.Cast(image, sitk.sitkFloat32)
        if min(image.GetSize()) >= 4:
            # One axis at a time, and only along the axes whose spacing grows: the joint filter
            # refuses a zero sigma, which an axis already at the target spacing needs.
            source = floating
            for axis, s in enumerate(sigma.tolist()):
                if s > 0:
                    source = sitk.RecursiveGaussian(source, s, False, sitk.RecursiveGaussianImageFilter.ZeroOrder, axis)
        else:
            # The recursive filter needs 4 voxels on every axis; single slices and
            # localisers have 1. The kernel filter works at any size (variance in mm^2).
            source = sitk.DiscreteGaussian(floating, (sigma**2).tolist(), 32, 0.01, True)
        source = sitk.Cast(source, image.GetPixelID())
    return sitk.Resample(source, [int(s) for s in size], sitk.Transform(), INTERPOLATORS[interpolator],
                         origin.tolist(), spacing.tolist(), image.GetDirection(), 0, image.GetPixelID())
