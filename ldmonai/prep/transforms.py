"""Every preprocessing step as a MONAI dictionary transform, for bundle configs.

``LoadImaged`` gives a ``MetaTensor`` (channel first, RAS affine); these transforms turn it
into a SimpleITK image with the same physical space, run the step, and turn the result back
into a ``MetaTensor`` whose affine is the step's output grid. So::

    Compose([LoadImaged("image"), EnsureChannelFirstd("image"),
             BiasFieldCorrectiond("image"), SkullStripd("image", mask_key="brain_mask"),
             PrepStepd("image", {"step": "resample", "spacing": 1.5})])

does in a bundle what ``ldmonai prep run`` does on files. The mask written by
``SkullStripd`` is a new key that later transforms (and ``SaveImaged``) can use.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from ldmonai.errors import LdmonaiError
from ldmonai.io.names import image_stem
from ldmonai.prep.dicom.naming import sanitize_component
from ldmonai.prep.steps import Case, build_step

# NIfTI/MONAI affines are RAS; ITK's physical space is LPS.
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def metatensor_to_sitk(tensor, case: str = "image") -> sitk.Image:
    """A one-channel ``MetaTensor`` ``(1, *spatial)`` as a SimpleITK image in the same physical space."""
    array = np.asarray(tensor.detach().cpu() if isinstance(tensor, torch.Tensor) else tensor)
    if array.ndim not in (3, 4) or array.shape[0] != 1:
        raise LdmonaiError(f"expected a one-channel (1, H, W[, D]) image, got shape {list(array.shape)}", case,
                           "add EnsureChannelFirstd before this transform and give it single-channel images")
    spatial = array.ndim - 1
    affine = np.asarray(tensor.affine if isinstance(tensor, MetaTensor) else np.eye(4), dtype=np.float64)
    full = np.eye(4)
    full[:spatial, :spatial] = affine[:spatial, :spatial]
    full[:spatial, 3] = affine[:spatial, -1]
    lps = _RAS_TO_LPS @ full
    spacing = np.linalg.norm(lps[:3, :spatial], axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array[0].T))
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(lps[:spatial, 3].tolist())
    image.SetDirection((lps[:spatial, :spatial] / spacing).ravel().tolist())
    return image


def sitk_to_metatensor(image: sitk.Image, like=None) -> MetaTensor:
    """A SimpleITK image as a ``(1, *spatial)`` ``MetaTensor`` with a RAS affine (meta of ``like`` kept)."""
    dims = image.GetDimension()
    lps = np.eye(4)
    lps[:dims, :dims] = np.array(image.GetDirection()).reshape(dims, dims) * np.array(image.GetSpacing())
    lps[:dims, 3] = image.GetOrigin()
    ras = _RAS_TO_LPS @ lps
    affine = ras if dims == 3 else np.delete(np.delete(ras, 2, 0), 2, 1)
    array = sitk.GetArrayFromImage(image).T[None]
    meta = dict(like.meta) if isinstance(like, MetaTensor) else {}
    meta.pop("affine", None)
    out = MetaTensor(torch.as_tensor(np.ascontiguousarray(array)), affine=torch.as_tensor(affine), meta=meta)
    out.meta["spatial_shape"] = np.array(array.shape[1:])
    return out


class PrepStepd(MapTransform):
    """Run one pipeline step (a config entry such as ``{"step": "n4"}``) on ``keys``.

    Args:
        keys: image keys to process.
        step: the step entry, as in a ``configs/prep`` file.
        mask_key: key of a brain mask; read by steps that use one (N4, z-score) and
            written by ``skullstrip``.
        label_key: key of a label map that moves with the image (registration, resampling).
        output_dir: where steps that write files of their own put them (the registration
            transform, the N4 bias field, slices); without it they write nothing.
        allow_missing_keys: skip absent keys instead of raising.
    """

    def __init__(self, keys: KeysCollection, step: dict, mask_key: str | None = None, label_key: str | None = None,
                 output_dir: str | None = None, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.step = build_step(dict(step), "PrepStepd")
        self.mask_key, self.label_key = mask_key, label_key
        self.output_dir = Path(output_dir) if output_dir else None

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            name = str(getattr(d[key], "meta", {}).get("filename_or_obj", key))
            case = Case(id=sanitize_component(image_stem(name)), image=metatensor_to_sitk(d[key], name),
                        source=name, out_dir=self.output_dir)
            if self.mask_key and self.mask_key in d:
                case.mask = sitk.Cast(metatensor_to_sitk(d[self.mask_key], name) > 0, sitk.sitkUInt8)
            if self.label_key and self.label_key in d:
                case.labels = sitk.Cast(metatensor_to_sitk(d[self.label_key], name), sitk.sitkInt32)
            case = self.step(case)
            d[key] = sitk_to_metatensor(sitk.Cast(case.image, sitk.sitkFloat32), d[key])
            if self.mask_key and case.mask is not None:
                d[self.mask_key] = sitk_to_metatensor(case.mask, d[key])
            if self.label_key and case.labels is not None:
                d[self.label_key] = sitk_to_metatensor(case.labels, d[key])
        return d


def _named(class_name: str, step_name: str, doc: str):
    def __init__(self, keys: KeysCollection, mask_key: str | None = None, label_key: str | None = None,
                 output_dir: str | None = None, allow_missing_keys: bool = False, **options):
        PrepStepd.__init__(self, keys, {"step": step_name, **options}, mask_key, label_key, output_dir,
                           allow_missing_keys)

    return type(class_name, (PrepStepd,), {"__init__": __init__, "__doc__": doc, "__module__": __name__})


BiasFieldCorrectiond = _named("BiasFieldCorrectiond", "n4", "N4 bias field correction; options as the ``n4`` pipeline step.")
SkullStripd = _named("SkullStripd", "skullstrip", "Skull-stripping (``method``: deepbet or the atlas; ``refine``: the CSF trim by "
                                                  "default); writes the brain mask to ``mask_key``.")
RegisterToTemplated = _named("RegisterToTemplated", "register", "Registration to a template; the image (and labels) move to its grid.")
Reorientd = _named("Reorientd", "reorient", "Reorient to an axis code (default RAS) without interpolation.")
ResampleToSpacingd = _named("ResampleToSpacingd", "resample", "Resample to a spacing in mm (labels by nearest neighbour).")
NormalizeIntensityd = _named("NormalizeIntensityd", "normalize", "z-score inside the mask or percentile clipping.")
CTWindowd = _named("CTWindowd", "window", "CT windowing by preset or centre/width.")

__all__ = ["BiasFieldCorrectiond", "CTWindowd", "NormalizeIntensityd", "PrepStepd", "RegisterToTemplated",
           "ResampleToSpacingd", "Reorientd", "SkullStripd", "metatensor_to_sitk", "sitk_to_metatensor"]
