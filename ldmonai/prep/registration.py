"""Rigid, affine and B-spline registration with elastix (itk-elastix), exported as plain ITK transforms.

elastix is the registration engine because it is the fastest well-kept deformable
registration that installs from the registry on 2 CPU cores: on MNI152 1 mm under a known
affine plus B-spline warp it reaches 116-label Dice 0.98 in about 20 s (see
``docs/benchmarks.md``), where SimpleITK's own B-spline registration is several times slower.

What comes out is not elastix-specific: each elastix stage is converted to the standard ITK
transform it is numerically equal to (``Euler3DTransform``, ``AffineTransform``,
``BSplineTransform``) and the stages are chained in an ITK ``CompositeTransform``. That file
(``.tfm`` for linear, ``.h5`` for deformable) opens in 3D Slicer, ANTs and SimpleITK, and
resampling with it reproduces elastix's own result exactly (``tests/test_prep_registration.py``).

Convention: ``transform`` maps a point of the *fixed* image to the *moving* image, as every
ITK resampler expects. ``resample(moving)`` puts the moving image on the fixed grid.

Not used: elastix's default B-spline map adds a ``TransformBendingEnergyPenalty`` metric; the
itk-elastix 0.25.4 wheel segfaults in it on 3D volumes (and elastix's maintainers discuss
dropping it from the default, SuperElastix/elastix#1377). Smoothness comes from the control
point spacing and the multi-resolution schedule instead.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ldmonai.errors import LdmonaiError
from ldmonai.io.atomic import atomic_path
from ldmonai.prep.image import from_itk, require_dims, require_same_space, to_itk

KINDS = ("rigid", "affine", "bspline")
METRICS = {"ncc": "AdvancedNormalizedCorrelation", "mi": "AdvancedMattesMutualInformation",
           "msd": "AdvancedMeanSquares"}
INITIALIZATIONS = ("CenterOfGravity", "GeometricalCenter")  # elastix's automatic starts
INTERPOLATORS = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor, "bspline": sitk.sitkBSpline}


@dataclass
class RegistrationSettings:
    """elastix settings that matter; the defaults are the ones measured in ``docs/benchmarks.md``.

    Args:
        kind: ``rigid`` (6 dof), ``affine`` (12 dof) or ``bspline`` (affine, then a cubic
            B-spline free-form deformation).
        metric: ``ncc`` for the same contrast (T1 to T1 template), ``mi`` across contrasts,
            ``msd`` for identical intensity scales.
        grid_spacing_mm: B-spline control point spacing at the finest level; smaller follows
            finer anatomy and costs time.
        linear_resolutions / bspline_resolutions: pyramid levels of each stage.
        linear_iterations / bspline_iterations: optimiser iterations per level.
        linear_samples / bspline_samples: random voxel samples per iteration.
        seed: elastix's sampler seed; the same seed and thread count give the same result.
        initialization: elastix's automatic start, ``CenterOfGravity`` (centres of mass) or
            ``GeometricalCenter`` (centres of the image boxes).
        threads: worker threads (default: SimpleITK's global default, i.e. all cores unless a
            pipeline worker has been given its share).
    """

    kind: str = "bspline"
    metric: str = "ncc"
    grid_spacing_mm: float = 10.0
    linear_resolutions: int = 3
    bspline_resolutions: int = 3
    linear_iterations: int = 250
    bspline_iterations: int = 250
    linear_samples: int = 2048
    bspline_samples: int = 4096
    seed: int = 0
    initialization: str = "CenterOfGravity"
    threads: int | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise LdmonaiError(f"unknown registration kind {self.kind!r}", fix=f"use one of {', '.join(KINDS)}")
        if self.initialization not in INITIALIZATIONS:
            raise LdmonaiError(f"unknown registration initialization {self.initialization!r}",
                               fix=f"use one of {', '.join(INITIALIZATIONS)}")
        if self.metric not in METRICS:
            raise LdmonaiError(f"unknown registration metric {self.metric!r}", fix=f"use one of {', '.join(METRICS)}")

    def parameter_maps(self, parameter_object) -> list:
        linear = parameter_object.GetDefaultParameterMap("rigid" if self.kind == "rigid" else "affine",
                                                         self.linear_resolutions)
        linear["Metric"] = [METRICS[self.metric]]
        # Heads come with different fields of view and positions; start from the centres of mass.
        linear["AutomaticTransformInitialization"] = ["true"]
        linear["AutomaticTransformInitializationMethod"] = [self.initialization]
        linear["MaximumNumberOfIterations"] = [str(self.linear_iterations)]
        linear["NumberOfSpatialSamples"] = [str(self.linear_samples)]
        maps = [linear]
        if self.kind == "bspline":
            bspline = parameter_object.GetDefaultParameterMap("bspline", self.bspline_resolutions, float(self.grid_spacing_mm))
            bspline["Metric"] = [METRICS[self.metric]]
            bspline["Registration"] = ["MultiResolutionRegistration"]
            for key in ("Metric0Weight", "Metric1Weight"):
                bspline.pop(key, None)
            bspline["MaximumNumberOfIterations"] = [str(self.bspline_iterations)]
            bspline["NumberOfSpatialSamples"] = [str(self.bspline_samples)]
            maps.append(bspline)
        for m in maps:
            m["RandomSeed"] = [str(self.seed)]
            m["WriteResultImage"] = ["false"]
        return maps


@dataclass
class Registration:
    """A finished registration: the fixed grid and the fixed-to-moving transform."""

    fixed: sitk.Image
    transform: sitk.Transform
    kind: str
    seconds: float = 0.0
    stages: list = field(default_factory=list)
    elastix_output: sitk.Image | None = None  # elastix's own resampled moving image, for checking the export

    def resample(self, moving: sitk.Image, interpolator: str = "linear", default_value: float = 0.0) -> sitk.Image:
        """``moving`` on the fixed grid. Use ``nearest`` for label maps: labels keep their values."""
        if interpolator not in INTERPOLATORS:
            raise LdmonaiError(f"unknown interpolator {interpolator!r}", fix=f"use one of {', '.join(INTERPOLATORS)}")
        return sitk.Resample(moving, self.fixed, self.transform, INTERPOLATORS[interpolator], default_value,
                             moving.GetPixelID())

    def write(self, path: str | os.PathLike) -> Path:
        """Write the transform as an ITK transform file (``.tfm``/``.txt`` for linear kinds, ``.h5``)."""
        path = Path(path)
        if self.kind == "bspline" and path.suffix.lower() != ".h5":
            raise LdmonaiError("a B-spline transform needs an HDF5 transform file", path, "name it *.h5")
        with atomic_path(path) as tmp:
            sitk.WriteTransform(self.transform, str(tmp))
        return path


def _stage_transform(tp, i: int) -> sitk.Transform:
    """elastix transform parameter map ``i`` as the ITK transform it is equal to."""
    def floats(key):
        return [float(v) for v in tp.GetParameter(i, key)]

    name = tp.GetParameter(i, "Transform")[0]
    if name == "EulerTransform":
        p = floats("TransformParameters")
        t = sitk.Euler3DTransform(floats("CenterOfRotationPoint"), p[0], p[1], p[2], p[3:6])
        t.SetComputeZYX(tp.GetParameter(i, "ComputeZYX")[0] == "true" if tp.HasParameter(i, "ComputeZYX") else False)
        return t
    if name == "AffineTransform":
        p = floats("TransformParameters")
        return sitk.AffineTransform(p[:9], p[9:12], floats("CenterOfRotationPoint"))
    if name == "BSplineTransform":
        order = int(tp.GetParameter(i, "BSplineTransformSplineOrder")[0]) if tp.HasParameter(i, "BSplineTransformSplineOrder") else 3
        t = sitk.BSplineTransform(3, order)
        t.SetFixedParameters([float(v) for v in tp.GetParameter(i, "GridSize")] + floats("GridOrigin")
                             + floats("GridSpacing") + floats("GridDirection"))
        t.SetParameters(floats("TransformParameters"))
        return t
    raise LdmonaiError(f"elastix returned a {name}, which ldmonai cannot export", fix="use kind rigid, affine or bspline")


def register(fixed: sitk.Image, moving: sitk.Image, settings: RegistrationSettings | None = None,
             fixed_mask: sitk.Image | None = None, case: str | os.PathLike = "registration",
             keep_elastix_output: bool = False) -> Registration:
    """Register ``moving`` to ``fixed``.

    Args:
        fixed: the reference grid (template, or the subject when propagating atlas labels).
        moving: the image to align to it.
        settings: what to run (default: affine then B-spline, NCC).
        fixed_mask: optional binary mask on ``fixed``'s grid limiting where the metric is computed.
        case: name used in error messages.
        keep_elastix_output: also keep elastix's own resampled moving image (to check the export).

    Returns:
        A :class:`Registration` whose ``transform`` maps fixed points to moving points.

    Raises:
        LdmonaiError: 2D input, NaN voxels, a mask on another grid, or no overlap between the images.
    """
    import itk

    settings = settings or RegistrationSettings()
    for image, what in ((fixed, "fixed image"), (moving, "moving image")):
        require_dims(image, 3, "register", f"{case} ({what})")
        if not np.isfinite(sitk.GetArrayViewFromImage(image)).all():
            raise LdmonaiError(f"{what} holds NaN or infinite voxels", case, "fix the source volume first")
    if fixed_mask is not None:
        require_same_space(fixed, fixed_mask, case, "fixed mask")

    po = itk.ParameterObject.New()
    for m in settings.parameter_maps(po):
        if keep_elastix_output:
            m["WriteResultImage"] = ["true"]
        po.AddParameterMap(m)
    method = itk.ElastixRegistrationMethod.New(to_itk(fixed), to_itk(moving))
    method.SetParameterObject(po)
    method.SetLogToConsole(False)
    method.SetNumberOfThreads(settings.threads or sitk.ProcessObject.GetGlobalDefaultNumberOfThreads())
    if fixed_mask is not None:
        method.SetFixedMask(to_itk(fixed_mask > 0, sitk.sitkUInt8))
    start = time.perf_counter()
    try:
        method.Update()
    except RuntimeError as err:
        last = [ln for ln in str(err).splitlines() if ln.strip()]
        raise LdmonaiError(f"elastix could not register the images ({last[-1][:200] if last else 'no message'})", case,
                           "check that both images show the same anatomy and overlap after centring; "
                           "try metric 'mi' for different contrasts") from None
    seconds = time.perf_counter() - start
    tp = method.GetTransformParameterObject()
    stages = [_stage_transform(tp, i) for i in range(tp.GetNumberOfParameterMaps())]
    # elastix composes later stages on top of earlier ones; ITK's CompositeTransform applies the
    # last-added transform first, so the stage list goes in reversed.
    transform = sitk.CompositeTransform(list(reversed(stages))) if len(stages) > 1 else stages[0]
    return Registration(fixed=fixed, transform=transform, kind=settings.kind, seconds=seconds, stages=stages,
                        elastix_output=from_itk(method.GetOutput(), fixed) if keep_elastix_output else None)


def label_dice(a: sitk.Image, b: sitk.Image, labels=None) -> dict[int, float]:
    """Dice per label value between two label maps on one grid (labels absent from both are left out)."""
    x = sitk.GetArrayViewFromImage(a)
    y = sitk.GetArrayViewFromImage(b)
    values = labels if labels is not None else sorted(set(np.unique(x)) | set(np.unique(y)) - {0})
    out = {}
    for v in values:
        p, q = x == v, y == v
        denom = p.sum() + q.sum()
        if denom:
            out[int(v)] = float(2.0 * np.logical_and(p, q).sum() / denom)
    return out
