"""Checks of a brain mask that a batch reports, and a figure to check it by eye.

A skull-strip that returns *a* mask is not yet a success: a fit that slipped gives a mask of a few
hundred ml, or one that runs down the neck. Two numbers catch most of it without a reference:

- the mask volume: an adult brain (ROBEX-style, with sulcal CSF) is 900 to 1,900 ml;
- the fit's correlation (:func:`ldmonai.prep.skull_strip.fit_correlation`): the registered atlas
  head against the subject, around the brain.

A case outside either range is *suspect*: it is written, warned about in the summary and counted
in ``prep_report.json``. Every case also gets ``<case>_mask.png``: three orthogonal planes through
the mask's centre with its outline, so that a batch can be checked by eye in a file browser.
"""

from __future__ import annotations

import os

import numpy as np
import SimpleITK as sitk

ADULT_BRAIN_ML = (900.0, 1900.0)
# Measured on the two real UIH heads (docs/benchmarks.md, "Preprocessing"): 0.66 to 0.69 where the mask
# reached Dice 0.94 against ROBEX, 0.46 to 0.50 where it reached 0.90. Below 0.4 a fit has slipped.
MIN_CORRELATION = 0.4


def suspect_reasons(volume_ml: float, correlation: float | None, brain_ml: tuple[float, float] = ADULT_BRAIN_ML,
                    min_correlation: float = MIN_CORRELATION) -> list[str]:
    """Why a mask is implausible, or an empty list."""
    reasons = []
    if not brain_ml[0] <= volume_ml <= brain_ml[1]:
        reasons.append(f"mask volume {volume_ml:.0f} ml is outside {brain_ml[0]:.0f} to {brain_ml[1]:.0f} ml "
                       "(an adult brain); check the mask figure")
    if correlation is not None and correlation < min_correlation:
        reasons.append(f"atlas fit correlation {correlation:.2f} is below {min_correlation:.2f} (the fit probably slipped)")
    return reasons


def mask_figure(path: str | os.PathLike, image: sitk.Image, mask: sitk.Image, title: str = "") -> None:
    """Write a PNG of three orthogonal planes (in RAS, 1 mm display) through the mask's centre, with
    the mask outline in red. Written atomically."""
    from ldmonai.io.preview import pyplot, save_figure

    ras = sitk.DICOMOrient(image, "RAS")
    ras_mask = sitk.DICOMOrient(mask, "RAS")
    a = sitk.GetArrayFromImage(ras).transpose(2, 1, 0).astype(np.float32)  # (x: R, y: A, z: S)
    m = sitk.GetArrayFromImage(ras_mask).transpose(2, 1, 0) > 0
    sx, sy, sz = ras.GetSpacing()
    centre = [int(round(c.mean())) for c in np.nonzero(m)] if m.any() else [n // 2 for n in a.shape]
    lo, hi = np.percentile(a, (1, 99.5))
    planes = [("axial", a[:, :, centre[2]].T, m[:, :, centre[2]].T, sy / sx),
              ("coronal", a[:, centre[1], :].T, m[:, centre[1], :].T, sz / sx),
              ("sagittal", a[centre[0], :, :].T, m[centre[0], :, :].T, sz / sy)]
    fig, axes = pyplot().subplots(1, 3, figsize=(9, 3.4))
    for ax, (name, plane, outline, aspect) in zip(axes, planes):
        ax.imshow(plane, cmap="gray", origin="lower", vmin=lo, vmax=hi, aspect=aspect)
        if outline.any():
            ax.contour(outline.astype(float), levels=[0.5], colors="red", linewidths=0.8)
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=90)


__all__ = ["ADULT_BRAIN_ML", "MIN_CORRELATION", "mask_figure", "suspect_reasons"]
