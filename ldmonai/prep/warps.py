"""Known random transforms: the ground truth for registration and skull-stripping checks.

A registration method is only trustworthy if it recovers a transform we chose. These make
the three kinds that real anatomy differs by: a global affine (head position and size), a
smooth B-spline deformation, and a diffeomorphic warp from a stationary velocity field. The
last two come from different families on purpose, so that a B-spline registration is not
only ever tested against B-spline truth.

Every function returns a SimpleITK transform that maps points of the *warped* image to points
of the *source* image, which is what ``warp_image`` hands to the resampler.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def image_center(image: sitk.Image) -> np.ndarray:
    """Physical position of the voxel-grid centre."""
    return np.array(image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2.0 for s in image.GetSize()]))


def random_affine(image: sitk.Image, rng: np.random.Generator, rotation_deg: float = 10.0, scale: float = 0.06,
                  shear: float = 0.03, translation_mm: float = 10.0) -> sitk.AffineTransform:
    """Rotation (each axis up to ``rotation_deg``), scaling, shear and translation about the image centre."""
    center = image_center(image)
    angles = np.deg2rad(rng.uniform(-rotation_deg, rotation_deg, 3))
    rotation = np.array(sitk.Euler3DTransform(center.tolist(), *angles).GetMatrix()).reshape(3, 3)
    stretch = np.diag(1.0 + rng.uniform(-scale, scale, 3))
    skew = np.eye(3) + np.triu(rng.uniform(-shear, shear, (3, 3)), 1)
    matrix = rotation @ stretch @ skew
    return sitk.AffineTransform(matrix.ravel().tolist(), rng.uniform(-translation_mm, translation_mm, 3).tolist(),
                                center.tolist())


def random_bspline(image: sitk.Image, rng: np.random.Generator, mesh: int = 6, sigma_mm: float = 3.0) -> sitk.BSplineTransform:
    """Cubic B-spline deformation with ``mesh``^3 cells over the image and Gaussian coefficients (mm)."""
    transform = sitk.BSplineTransformInitializer(image, [mesh] * image.GetDimension(), 3)
    n = len(transform.GetParameters())
    transform.SetParameters(rng.normal(0.0, sigma_mm, n).tolist())
    return transform


def random_velocity_warp(image: sitk.Image, rng: np.random.Generator, rms_velocity_mm: float = 3.0,
                         smoothing_mm: float = 20.0, grid_mm: float = 4.0, steps: int = 7) -> sitk.DisplacementFieldTransform:
    """Diffeomorphic warp: exp of a smooth random stationary velocity field (scaling and squaring).

    The velocity is Gaussian noise smoothed by ``smoothing_mm`` on a ``grid_mm`` grid over the
    image, scaled so that its root-mean-square length is ``rms_velocity_mm`` (the maximum would
    be set by the few large vectors that recursive smoothing leaves at the borders); MONAI's
    ``DVF2DDF`` integrates it.
    """
    import torch
    from monai.networks.blocks import DVF2DDF

    dims = image.GetDimension()
    extent = np.array(image.GetSize()) * np.array(image.GetSpacing())
    size = np.maximum(np.ceil(extent / grid_mm).astype(int), 4)
    grid = sitk.Image([int(s) for s in size], sitk.sitkVectorFloat64, dims)
    grid.SetSpacing([grid_mm] * dims)
    grid.SetDirection(image.GetDirection())
    # Centre the coarse grid on the image.
    offset = np.array(image.GetDirection()).reshape(dims, dims) @ ((size - 1) * grid_mm / 2.0)
    grid.SetOrigin((image_center(image) - offset).tolist())

    sigma_vox = smoothing_mm / grid_mm
    velocity = []
    for _ in range(dims):
        noise = sitk.GetImageFromArray(rng.normal(size=tuple(int(s) for s in size[::-1])))
        velocity.append(sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(noise, sigma_vox)).transpose())
    field = np.stack(velocity)  # (dims, x, y, z) in grid voxels along the grid axes
    rms = np.sqrt((field ** 2).sum(0).mean())
    field *= (rms_velocity_mm / grid_mm) / max(rms, 1e-12)
    with torch.no_grad():
        ddf = DVF2DDF(num_steps=steps, mode="bilinear", padding_mode="border")(torch.from_numpy(field[None]).float())
    ddf_vox = ddf[0].numpy().astype(np.float64)
    direction = np.array(image.GetDirection()).reshape(dims, dims)
    ddf_mm = np.einsum("ij,j...->i...", direction, ddf_vox * grid_mm)
    vectors = sitk.GetImageFromArray(np.moveaxis(ddf_mm, 0, -1).transpose(2, 1, 0, 3), isVector=True)
    vectors.CopyInformation(grid)
    return sitk.DisplacementFieldTransform(vectors)


def compose(*transforms: sitk.Transform) -> sitk.CompositeTransform:
    """``compose(a, b)(x) = a(b(x))``: ``b`` is applied first, as in mathematical notation."""
    return sitk.CompositeTransform(list(transforms))


def warp_image(image: sitk.Image, transform: sitk.Transform, reference: sitk.Image | None = None,
               label: bool = False, default_value: float = 0.0) -> sitk.Image:
    """``image`` seen through ``transform`` on ``reference``'s grid (nearest neighbour for labels)."""
    interpolator = sitk.sitkNearestNeighbor if label else sitk.sitkLinear
    return sitk.Resample(image, reference if reference is not None else image, transform, interpolator,
                         default_value, image.GetPixelID())


def reference_grid(image: sitk.Image, spacing, pad_mm=(0.0, 0.0, 0.0), crop_mm=(0.0, 0.0, 0.0)) -> sitk.Image:
    """An empty grid over ``image``'s field of view with new ``spacing``, grown by ``pad_mm`` at the
    low end of each axis and shrunk by ``crop_mm`` at the high end: a scan with another field of view."""
    dims = image.GetDimension()
    spacing = np.asarray(spacing, dtype=float)
    extent = np.array(image.GetSize()) * np.array(image.GetSpacing())
    size = np.round((extent + np.asarray(pad_mm) - np.asarray(crop_mm)) / spacing).astype(int)
    direction = np.array(image.GetDirection()).reshape(dims, dims)
    origin = np.array(image.GetOrigin()) - direction @ np.asarray(pad_mm, dtype=float)
    grid = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    grid.SetSpacing(spacing.tolist())
    grid.SetOrigin(origin.tolist())
    grid.SetDirection(image.GetDirection())
    return grid
