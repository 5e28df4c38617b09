"""Dictionary transforms that GDM bundles chain around the generator: checks, masks and
the sparse-view simulation."""

from __future__ import annotations

import logging
import warnings
from typing import Mapping

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform
from scipy import ndimage

from ldmonai.errors import LdmonaiError
from ldmonai.gdm.ct_physics import Projector, attenuation_to_hu, hu_to_attenuation
from ldmonai.gdm.hu import hu_to_unit, unit_to_hu
from ldmonai.io.names import source_name

logger = logging.getLogger("ldmonai")
__all__ = ["CheckCTPaird", "SparseViewd", "body_mask"]


def body_mask(image: np.ndarray) -> np.ndarray:
    """Foreground of an MR or CT volume: above 10% of its robust maximum (or -500 HU for CT),
    closed, holes filled, largest component. SynthRAD's own masks are dilated body outlines;
    this is the fallback when a case comes without one."""
    lo, hi = np.percentile(image, [1, 99])
    threshold = -500.0 if lo < -500 else lo + 0.1 * (hi - lo)
    mask = ndimage.binary_closing(image > threshold, iterations=2)
    mask = ndimage.binary_fill_holes(mask)
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum(mask, labels, range(1, n + 1))
        mask = labels == (1 + int(np.argmax(sizes)))
    return ndimage.binary_dilation(mask, iterations=1)


def _warn(text: str) -> None:
    logger.warning(text)
    warnings.warn(text, stacklevel=3)


class CheckCTPaird(MapTransform):
    """Refuse or repair a paired case before it reaches the generator, naming the case.

    - NaN or infinite values in either image: refused.
    - MR and CT (and mask) of different geometry (shape, or affine beyond ``tolerance`` mm):
      refused; the fix is to resample the CT onto the MR grid.
    - No mask: a body mask from the MR (:func:`body_mask`), with a warning.
    - A CT whose values do not look like HU (no air near -1000, or nothing above 100):
      a warning, since a CT stored with an offset or as [0, 1] would train a wrong mapping.

    Args:
        image_key, label_key, mask_key: MR and CT and mask keys, channel first. For
            sparse-view CT the CT is the input (``image_key="label"``, ``label_key=None``);
            ``mask_key=None`` skips the mask (inference).
        allow_missing_label: inference inputs come without CT.
        tolerance: affine tolerance in mm.
    """

    def __init__(self, image_key: str = "image", label_key: str | None = "label", mask_key: str | None = "mask",
                 allow_missing_label: bool = False, tolerance: float = 1e-3) -> None:
        super().__init__([image_key])
        self.image_key, self.label_key, self.mask_key = image_key, label_key, mask_key
        self.allow_missing_label = allow_missing_label or label_key is None
        self.tolerance = tolerance

    def _same_grid(self, d: Mapping, key: str, case: str) -> None:
        a, b = d[self.image_key], d[key]
        if tuple(a.shape[1:]) != tuple(b.shape[1:]):
            raise LdmonaiError(
                f"case {case}: {key} shape {tuple(b.shape[1:])} differs from the input's {tuple(a.shape[1:])}",
                source_name(d, key), "resample it onto the MR grid (ldmonai prep resample, or SimpleITK.Resample with the MR as reference)",
            )
        aff_a, aff_b = getattr(a, "affine", None), getattr(b, "affine", None)
        if aff_a is not None and aff_b is not None:
            diff = float(torch.as_tensor(aff_a, dtype=torch.float64).sub(torch.as_tensor(aff_b, dtype=torch.float64)).abs().max())
            if diff > self.tolerance:
                raise LdmonaiError(
                    f"case {case}: {key} and the input have the same shape but different geometry (affines differ by {diff:.3g} mm)",
                    source_name(d, key), "resample it onto the MR grid so that both share origin, spacing and direction",
                )

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        case = str(d.get("case") or source_name(d, self.image_key))
        for key in (self.image_key, self.label_key):
            if key is not None and key in d and not torch.isfinite(torch.as_tensor(d[key])).all():
                raise LdmonaiError(f"case {case}: {key} contains NaN or infinite values", source_name(d, key), "fix or drop this case")
        if self.label_key is not None:
            if self.label_key in d:
                self._same_grid(d, self.label_key, case)
            elif not self.allow_missing_label:
                raise LdmonaiError(f"case {case} has no {self.label_key!r} (the target CT)", source_name(d, self.image_key),
                                   f"add a {self.label_key!r} path for it to the datalist")
        ct_key = self.image_key if self.label_key is None else self.label_key
        if ct_key in d:
            ct = torch.as_tensor(d[ct_key]).float()
            lo, hi = (float(v) for v in torch.quantile(ct.flatten()[:: max(1, ct.numel() // 200000)], torch.tensor([0.01, 0.99])))
            if lo > -500 or hi < 100:
                _warn(
                    f"case {case}: CT values span [{lo:.0f}, {hi:.0f}] (1st-99th percentile), which does not look like HU "
                    f"(air is -1000, bone above 300); rescale it to HU ({source_name(d, ct_key)})"
                )
        if self.mask_key is None:
            return d
        if d.get(self.mask_key) is None:
            _warn(f"case {case}: no mask, using a body mask from the input image instead")
            ref = d[self.image_key]
            mask = body_mask(np.asarray(ref[0], dtype=np.float32))[None].astype(np.float32)
            d[self.mask_key] = MetaTensor(mask, meta=dict(getattr(ref, "meta", {}))) if isinstance(ref, MetaTensor) else torch.from_numpy(mask)
        else:
            self._same_grid(d, self.mask_key, case)
        return d


class _SliceProjection:
    """One :class:`Projector` per slice size and device, built on first use, for the transforms
    that simulate a sparse scan and that make a reconstruction consistent with it."""

    num_views: int
    geometry: str

    def projector(self, size: tuple[int, int], device: torch.device | str = "cpu") -> Projector:
        cache = self.__dict__.setdefault("_projectors", {})
        key = (size, str(device))
        if key not in cache:
            cache[key] = Projector(size, self.num_views, self.geometry).to(device)
        return cache[key]


def _like(value: torch.Tensor, reference) -> torch.Tensor:
    """``value`` with ``reference``'s metadata when that is a MetaTensor (affine, file name)."""
    return MetaTensor(value, meta=dict(reference.meta)) if isinstance(reference, MetaTensor) else value


class SparseViewd(_SliceProjection, MapTransform):
    """Simulate a sparse-view scan of a unit-range CT and put its FBP in ``target_key``.

    The CT (``source_key``, unit range) becomes attenuation, is projected slice by slice
    over ``num_views`` angles, optionally gets Gaussian noise on the line integrals, and is
    reconstructed by filtered back-projection; the result goes back to unit range. The
    sinogram is kept under ``sinogram_key`` for data-consistency refinement.

    Args:
        num_views: views of the sparse scan (18, 36, 72, ...).
        geometry: ``parallel`` or ``fan``.
        noise_std: std of Gaussian noise on the line integrals (pixel units).
        filter_window: FBP filter window.
        seed: noise seed, so that a cached dataset is reproducible.
    """

    def __init__(self, num_views: int = 36, geometry: str = "parallel", noise_std: float = 0.0, filter_window: str = "ram-lak",
                 source_key: str = "label", target_key: str = "image", sinogram_key: str | None = None, seed: int = 0) -> None:
        super().__init__([source_key])
        self.num_views, self.geometry, self.noise_std, self.filter_window = num_views, geometry, noise_std, filter_window
        self.source_key, self.target_key, self.sinogram_key = source_key, target_key, sinogram_key
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        ct = d[self.source_key]
        vol = torch.as_tensor(ct).float()
        if vol.ndim not in (3, 4):
            raise LdmonaiError(f"expected a channel-first slice or volume, got shape {tuple(vol.shape)}", source_name(d, self.source_key))
        proj = self.projector(tuple(vol.shape[1:3]))
        mu = hu_to_attenuation(unit_to_hu(vol))[None]
        with torch.no_grad():
            sino = proj(mu)
            if self.noise_std > 0:
                sino = sino + self.noise_std * torch.randn(sino.shape, generator=self.generator)
            fbp = hu_to_unit(attenuation_to_hu(proj.fbp(sino, self.filter_window)))[0]
        d[self.target_key] = _like(fbp, ct)
        if self.sinogram_key:
            d[self.sinogram_key] = sino[0]
        return d


class DataConsistencyd(_SliceProjection, MapTransform):
    """SIRT data consistency on a sparse-view reconstruction: pull ``pred`` toward the measured views.

    ``pred`` (unit range, ``(1, H, W[, D])``) becomes attenuation, gets ``steps`` SIRT updates
    against ``sinogram_key`` (kept by :class:`SparseViewd` with the same ``num_views`` and
    ``geometry``), and goes back to unit range. ``steps=0`` passes the data through, so a
    config can switch it with one number.
    """

    def __init__(self, steps: int = 0, num_views: int = 36, geometry: str = "parallel", pred_key: str = "pred",
                 sinogram_key: str = "sinogram", relaxation: float = 1.0) -> None:
        super().__init__([pred_key])
        self.steps, self.num_views, self.geometry, self.relaxation = steps, num_views, geometry, relaxation
        self.pred_key, self.sinogram_key = pred_key, sinogram_key

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        if self.steps <= 0:
            return d
        if self.sinogram_key not in d:
            raise LdmonaiError(f"no {self.sinogram_key!r} to make the reconstruction consistent with",
                               source_name(d, "label"), "set sinogram_key on SparseViewd")
        pred = torch.as_tensor(d[self.pred_key]).float()
        proj = self.projector(tuple(pred.shape[1:3]), pred.device)
        mu = hu_to_attenuation(unit_to_hu(pred))[None]
        sino = torch.as_tensor(d[self.sinogram_key]).float().to(pred.device)[None]
        with torch.no_grad():
            refined = proj.refine(mu, sino, self.steps, self.relaxation)
        out = hu_to_unit(attenuation_to_hu(refined))[0]
        d[self.pred_key] = _like(out, d[self.pred_key])
        return d


class SinogramFBPd(_SliceProjection, MapTransform):
    """Reconstruct a measured sparse-view sinogram by FBP into ``target_key`` (unit range).

    The sinogram (``sinogram_key``, channel first ``(1, views, detectors, slices)``) must be in the
    geometry and units of the bundle's :class:`~ldmonai.gdm.ct_physics.Projector` for slices of
    ``image_size``: line integrals of attenuation per pixel (:func:`hu_to_attenuation`), views
    equally spaced over 180 degrees (parallel) or 360 (fan), one detector bin per pixel at the
    isocentre. That is what :class:`SparseViewd` keeps, and what a scanner's raw data become only
    after rebinning to that geometry. A sinogram of any other shape is refused with the shape the
    geometry expects.

    The reconstruction gets an affine of ``spacing`` mm (no position: a sinogram carries none) and
    the sinogram's file name, so outputs are named after it.
    """

    def __init__(self, image_size: tuple[int, int], spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
                 num_views: int = 36, geometry: str = "parallel", filter_window: str = "ram-lak",
                 sinogram_key: str = "sinogram", target_key: str = "image") -> None:
        super().__init__([sinogram_key])
        self.image_size = tuple(int(s) for s in image_size)
        self.spacing = tuple(float(s) for s in spacing)
        self.num_views, self.geometry, self.filter_window = num_views, geometry, filter_window
        self.sinogram_key, self.target_key = sinogram_key, target_key

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        sino = d[self.sinogram_key]
        proj = self.projector(self.image_size)
        s = torch.as_tensor(sino).float()
        expected = (self.num_views, proj.num_detectors)
        if s.ndim != 4 or tuple(s.shape[1:3]) != expected:
            raise LdmonaiError(
                f"sinogram shape {tuple(s.shape[1:])} does not fit the geometry: expected ({expected[0]} views, "
                f"{expected[1]} detectors, slices) for {self.num_views} {self.geometry} views of "
                f"{self.image_size[0]}x{self.image_size[1]} slices",
                source_name(d, self.sinogram_key), "set num_views, geometry and image_size to the scan's")
        with torch.no_grad():
            image = hu_to_unit(attenuation_to_hu(proj.fbp(s[None], self.filter_window)))[0]
        meta = dict(getattr(sino, "meta", {}) or {})
        affine = torch.diag(torch.tensor([*self.spacing, 1.0], dtype=torch.float64))
        meta.update({"affine": affine, "original_affine": affine, "spatial_shape": list(image.shape[1:])})
        d[self.target_key] = MetaTensor(image, affine=affine, meta=meta)
        d[self.sinogram_key] = s
        return d
