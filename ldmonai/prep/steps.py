"""The steps a preprocessing pipeline is made of, each configurable from a YAML/JSON entry.

A step takes a :class:`Case` (the current image, and the brain mask and label map when the
case has them) and returns it changed. Steps that move the image to another grid move the
mask and labels with it (labels by nearest neighbour), so they stay aligned to the end.
Steps that write files of their own (transforms, bias fields, slices) write them into the
case's output folder and list them in ``case.files``.

The step names in configs are the keys of :data:`STEPS`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path

import SimpleITK as sitk

from ldmonai.errors import LdmonaiError
from ldmonai.prep.bias_field import n4_bias_correct
from ldmonai.prep.image import read_image, require_dims, require_same_space, write_image
from ldmonai.prep.intensity import ct_window, percentile_clip, zscore
from ldmonai.prep.registration import RegistrationSettings, register
from ldmonai.prep.resample import reorient, resample_to_spacing
from ldmonai.prep.skull_strip import SkullStripper
from ldmonai.prep.slices import SliceExtractor
from ldmonai.prep.templates import template_path


@dataclass
class Case:
    """One subject's data as it moves through a pipeline."""

    id: str
    image: sitk.Image
    source: str
    out_dir: Path | None  # where steps write their own files (transforms, bias fields, slices); None: nowhere
    mask: sitk.Image | None = None
    labels: sitk.Image | None = None
    meta: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)
    slices: list = field(default_factory=list)

    def regrid(self, move) -> None:
        """Apply ``move(image, interpolator)`` to the image, mask and labels alike."""
        self.image = move(self.image, "linear")
        if self.mask is not None:
            self.mask = sitk.Cast(move(self.mask, "nearest"), sitk.sitkUInt8)
        if self.labels is not None:
            self.labels = move(self.labels, "nearest")


class Step:
    """Base class: ``name`` is the config key; ``__call__`` does the work."""

    name = ""
    needs_3d = False

    def __call__(self, case: Case) -> Case:
        raise NotImplementedError

    def check(self, case: Case) -> None:
        if self.needs_3d:
            require_dims(case.image, 3, self.name, case.source)
        elif case.image.GetDimension() > 3:
            raise LdmonaiError(f"'{self.name}' works on 2D or 3D images but this one is {case.image.GetDimension()}D "
                               f"(size {list(case.image.GetSize())})", case.source,
                               "add '- step: volume' before it to pick one volume (or the mean) of the series")


class SelectVolume(Step):
    """One 3D volume of a 4D series (fMRI, DWI): ``index`` (default 0) or ``reduce: mean``."""

    name = "volume"

    def __init__(self, index: int = 0, reduce: str | None = None):
        if reduce not in (None, "mean"):
            raise LdmonaiError(f"unknown volume reduction {reduce!r}", fix="use reduce: mean, or an index")
        self.index, self.reduce = int(index), reduce

    def __call__(self, case: Case) -> Case:
        if case.image.GetDimension() != 4:
            return case
        n = case.image.GetSize()[3]
        if self.reduce == "mean":
            volumes = [case.image[:, :, :, t] for t in range(n)]
            case.image = sitk.NaryAdd(volumes) / float(n)
        else:
            if not -n <= self.index < n:
                raise LdmonaiError(f"volume index {self.index} is outside the series' {n} volumes", case.source,
                                   f"use an index from 0 to {n - 1}")
            case.image = case.image[:, :, :, self.index % n]
        case.meta["volumes_in_series"] = n
        return case


class BiasCorrection(Step):
    """N4 bias field correction (fitted inside the brain mask when the case has one)."""

    name = "n4"

    def __init__(self, shrink: int = 4, iterations=(50, 50, 30), save_field: bool = False):
        self.shrink, self.iterations, self.save_field = shrink, tuple(iterations), save_field

    def __call__(self, case: Case) -> Case:
        self.check(case)
        case.image, bias = n4_bias_correct(case.image, case.mask, self.shrink, self.iterations, case.source)
        if self.save_field and case.out_dir is not None:
            case.files["bias_field"] = str(write_image(bias, case.out_dir / f"{case.id}_biasfield.nii.gz"))
        return case


class Reorient(Step):
    """Permute/flip axes to an orientation code (default RAS); voxels are not interpolated."""

    name = "reorient"

    def __init__(self, orientation: str = "RAS"):
        self.orientation = orientation

    def __call__(self, case: Case) -> Case:
        self.check(case)
        case.regrid(lambda img, _interp: reorient(img, self.orientation))
        return case


class Resample(Step):
    """Resample to a voxel spacing in mm (labels and masks by nearest neighbour)."""

    name = "resample"

    def __init__(self, spacing=1.0, interpolator: str = "linear"):
        self.spacing, self.interpolator = spacing, interpolator

    def __call__(self, case: Case) -> Case:
        self.check(case)
        case.regrid(lambda img, interp: resample_to_spacing(
            img, self.spacing, self.interpolator if interp == "linear" else interp, case.source))
        return case


class SkullStrip(Step):
    """Skull-stripping (deepbet when installed, else atlas registration; ``method``) plus ITK cleanup;
    sets ``case.mask`` and zeroes the skull."""

    name = "skullstrip"
    needs_3d = True

    def __init__(self, atlas: str = "robex", atlas_mask: str | None = None, refine: str = "csf",
                 grid_spacing_mm: float = 30.0, closing_mm: float = 2.0, threads: int | None = None,
                 robust_fov: bool = True, fov_extent_mm: float = 150.0, brain_ml: tuple[float, float] = (900.0, 1900.0),
                 figure: bool = True, method: str = "auto"):
        settings = RegistrationSettings(kind="bspline", grid_spacing_mm=grid_spacing_mm, threads=threads)
        self.stripper = SkullStripper(atlas=atlas, atlas_mask=atlas_mask, refine=refine, registration=settings,
                                      closing_mm=closing_mm, robust_fov=robust_fov, fov_extent_mm=fov_extent_mm,
                                      method=method)
        self.brain_ml, self.figure = tuple(brain_ml), figure

    def __call__(self, case: Case) -> Case:
        from ldmonai.prep.qc import mask_figure, suspect_reasons

        self.check(case)
        original = case.image
        result = self.stripper(case.image, case.source)
        case.image, case.mask = result.stripped, result.mask
        case.meta["skullstrip_seconds"] = {k: round(v, 2) for k, v in result.seconds.items()}
        case.meta["skullstrip"] = {"method": self.stripper.method, "volume_ml": round(result.volume_ml, 1),
                                   "correlation": None if result.correlation is None else round(result.correlation, 3),
                                   "neck_cropped_mm": round(result.cropped_mm, 1)}
        reasons = suspect_reasons(result.volume_ml, result.correlation, self.brain_ml)
        if reasons:
            case.meta.setdefault("suspect", []).extend(reasons)
        if self.figure and case.out_dir is not None:
            fit = "" if result.correlation is None else f", fit correlation {result.correlation:.2f}"
            title = f"{case.id}: brain mask {result.volume_ml:.0f} ml ({self.stripper.method}){fit}"
            mask_figure(case.out_dir / f"{case.id}_mask.png", original, result.mask,
                        title + ("  SUSPECT" if reasons else ""))
        return case


class Register(Step):
    """Register the case to a template and move it (and its mask and labels) onto the template grid.

    The transform is written as ``<case>_to_template.tfm`` (linear) or ``.h5`` (B-spline): an
    ITK transform file that 3D Slicer, ANTs and SimpleITK read.
    """

    name = "register"
    needs_3d = True

    def __init__(self, template: str = "mni152", kind: str = "affine", metric: str = "ncc",
                 grid_spacing_mm: float = 10.0, seed: int = 0, threads: int | None = None):
        self.template = template
        self.settings = RegistrationSettings(kind=kind, metric=metric, grid_spacing_mm=grid_spacing_mm,
                                             seed=seed, threads=threads)
        self._fixed = None

    def __call__(self, case: Case) -> Case:
        self.check(case)
        if self._fixed is None:
            self._fixed = read_image(template_path(self.template))
        reg = register(self._fixed, case.image, self.settings, case=case.source)
        if case.out_dir is not None:
            suffix = ".h5" if self.settings.kind == "bspline" else ".tfm"
            case.files["transform"] = str(reg.write(case.out_dir / f"{case.id}_to_template{suffix}"))
        case.regrid(reg.resample)
        case.meta["registration_seconds"] = round(reg.seconds, 2)
        return case


class Normalize(Step):
    """Intensity normalisation: ``zscore`` (inside the mask) or ``percentile`` clipping."""

    name = "normalize"

    def __init__(self, method: str = "zscore", low: float = 0.5, high: float = 99.5, rescale: bool = True):
        if method not in ("zscore", "percentile"):
            raise LdmonaiError(f"unknown normalize method {method!r}", fix="use zscore or percentile")
        self.method, self.low, self.high, self.rescale = method, low, high, rescale

    def __call__(self, case: Case) -> Case:
        self.check(case)
        if self.method == "zscore":
            case.image = zscore(case.image, case.mask, case.source)
        else:
            case.image = percentile_clip(case.image, self.low, self.high, self.rescale, case.mask, case.source)
        return case


class Window(Step):
    """CT windowing by preset name or centre/width (HU)."""

    name = "window"

    def __init__(self, window: str | None = "soft_tissue", center: float | None = None, width: float | None = None,
                 rescale: bool = True):
        self.kwargs = {"window": window, "center": center, "width": width, "rescale": rescale}
        ct_window(sitk.Image([1, 1], sitk.sitkFloat32), **self.kwargs)  # reject a bad window now, not per case

    def __call__(self, case: Case) -> Case:
        self.check(case)
        case.image = ct_window(case.image, **self.kwargs)
        return case


class Slices(Step):
    """Write 2D slices (PNG and one-slice NIfTI) and their index rows."""

    name = "slices"
    needs_3d = True

    def __init__(self, **kwargs):
        for key in ("range_fraction", "formats"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        self.extractor = SliceExtractor(**kwargs)

    def __call__(self, case: Case) -> Case:
        self.check(case)
        if case.out_dir is None:
            raise LdmonaiError("'slices' writes files and needs an output folder", case.source,
                               "run it with 'ldmonai prep run' or give PrepStepd an output_dir")
        rows = self.extractor(case.image, case.out_dir / "slices", case.id, case.mask)
        case.slices.extend({**row, **case.meta.get("participant", {})} for row in rows)
        return case


STEPS: dict[str, type[Step]] = {cls.name: cls for cls in (SelectVolume, BiasCorrection, Reorient, Resample, SkullStrip, Register,
                                                           Normalize, Window, Slices)}


def build_step(entry: dict, where: str = "pipeline") -> Step:
    """A step from one config entry such as ``{"step": "resample", "spacing": [1, 1, 1]}``."""
    if not isinstance(entry, dict) or "step" not in entry:
        raise LdmonaiError(f"each pipeline entry needs a 'step' key, got {entry!r}", where,
                           f"write e.g. '- step: n4'; steps: {', '.join(STEPS)}")
    params = {k: v for k, v in entry.items() if k != "step"}
    name = entry["step"]
    if name not in STEPS:
        raise LdmonaiError(f"unknown step {name!r}", where, f"use one of {', '.join(STEPS)}")
    cls = STEPS[name]
    init = cls.__init__
    if cls is Slices:
        init = SliceExtractor.__init__
    allowed = set(inspect.signature(init).parameters) - {"self", "kwargs"}
    unknown = set(params) - allowed
    if unknown:
        raise LdmonaiError(f"step {name!r} has no option(s) {', '.join(sorted(unknown))}", where,
                           f"its options are: {', '.join(sorted(allowed))}")
    return cls(**params)


def attach_mask_and_labels(case: Case, mask_path: str | None, labels_path: str | None) -> None:
    """Read an input mask / label map and check they lie on the image's grid."""
    if mask_path:
        case.mask = sitk.Cast(read_image(mask_path, label=True) > 0, sitk.sitkUInt8)
        require_same_space(case.image, case.mask, mask_path, "mask")
    if labels_path:
        case.labels = read_image(labels_path, label=True)
        require_same_space(case.image, case.labels, labels_path, "label map")
