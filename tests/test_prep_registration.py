"""Registration against known truth on the real MNI152 template and its 116-label atlas.

The subject is the template seen through a transform we chose (a random affine, then a
B-spline or a diffeomorphic velocity-field warp), so the right answer is known everywhere:
landmark errors and label Dice measure recovery, not agreement with another tool.
"""

import numpy as np
import pytest
import SimpleITK as sitk

from ldmonai.errors import LdmonaiError
from ldmonai.prep import warps
from ldmonai.prep.image import read_image
from ldmonai.prep.registration import RegistrationSettings, label_dice, register


@pytest.fixture(scope="module")
def mni(ants_sample):
    return read_image(ants_sample / "mni.nii.gz"), read_image(ants_sample / "mnia.nii.gz", label=True)


def _centroids(labels: sitk.Image) -> np.ndarray:
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(labels)
    return np.array([stats.GetCentroid(v) for v in stats.GetLabels()])


def _mean_dice(a, b) -> float:
    return float(np.mean(list(label_dice(a, b, range(1, 117)).values())))


def test_affine_recovery_leaves_subvoxel_landmark_error(mni):
    template, labels = mni
    rng = np.random.default_rng(11)
    truth = warps.random_affine(template, rng, rotation_deg=10, scale=0.06, translation_mm=10)
    subject = warps.warp_image(template, truth)
    reg = register(subject, template, RegistrationSettings(kind="affine"))
    points = _centroids(warps.warp_image(labels, truth, label=True))  # 116 anatomical landmarks, subject space
    error = np.array([np.subtract(reg.transform.TransformPoint(p.tolist()), truth.TransformPoint(p.tolist())) for p in points])
    mean_voxels = float(np.linalg.norm(error / np.array(template.GetSpacing()), axis=1).mean())
    assert mean_voxels < 1.0, f"mean landmark error {mean_voxels:.2f} voxels"
    # Before registration the landmarks are far apart; the check is not trivially met.
    before = np.array([np.subtract(p, truth.TransformPoint(p.tolist())) for p in points])
    assert np.linalg.norm(before, axis=1).mean() > 5.0


@pytest.mark.slow
@pytest.mark.parametrize("warp", ["bspline", "velocity"])
def test_deformable_improves_label_dice_over_affine(mni, warp, tmp_path):
    template, labels = mni
    rng = np.random.default_rng(3)
    affine = warps.random_affine(template, rng, rotation_deg=8, translation_mm=8)
    local = (warps.random_bspline(template, rng, mesh=6, sigma_mm=3.0) if warp == "bspline"
             else warps.random_velocity_warp(template, rng, rms_velocity_mm=2.5, smoothing_mm=20.0))
    truth = warps.compose(affine, local)
    subject = warps.warp_image(template, truth)
    subject_labels = warps.warp_image(labels, truth, label=True)

    linear = register(subject, template, RegistrationSettings(kind="affine"))
    deformable = register(subject, template, RegistrationSettings(kind="bspline"), keep_elastix_output=True)
    dice_affine = _mean_dice(linear.resample(labels, "nearest"), subject_labels)
    propagated = deformable.resample(labels, "nearest")
    dice_bspline = _mean_dice(propagated, subject_labels)
    assert dice_bspline > dice_affine + 0.03, (dice_affine, dice_bspline)
    assert dice_bspline > 0.93, dice_bspline
    # Label propagation keeps integer label values: no value that the atlas does not have.
    assert set(np.unique(sitk.GetArrayViewFromImage(propagated))) <= set(np.unique(sitk.GetArrayViewFromImage(labels)))
    assert propagated.GetPixelID() == labels.GetPixelID()

    # The exported transform is plain ITK: reloaded from disk it reproduces elastix's own resampling.
    path = deformable.write(tmp_path / "subject_to_template.h5")
    reloaded = sitk.ReadTransform(str(path))
    ours = sitk.GetArrayFromImage(sitk.Resample(template, subject, reloaded, sitk.sitkBSpline, 0.0))
    theirs = sitk.GetArrayFromImage(deformable.elastix_output)
    assert np.abs(ours - theirs).max() < 1e-2 * np.abs(theirs).max()


def test_linear_transform_file_is_plain_itk(mni, tmp_path):
    template, _ = mni
    small = sitk.Shrink(template, [3, 3, 3])
    truth = warps.random_affine(small, np.random.default_rng(0), rotation_deg=5)
    reg = register(warps.warp_image(small, truth), small, RegistrationSettings(kind="rigid", linear_resolutions=2))
    path = reg.write(tmp_path / "rigid.tfm")
    text = path.read_text()
    assert "Euler3DTransform_double_3_3" in text
    reloaded = sitk.ReadTransform(str(path))
    p = [10.0, -20.0, 15.0]
    assert np.allclose(reloaded.TransformPoint(p), reg.transform.TransformPoint(p), atol=1e-6)
    with pytest.raises(LdmonaiError, match="HDF5"):
        register(small, small, RegistrationSettings(kind="bspline", bspline_resolutions=1, linear_resolutions=1,
                                                    bspline_iterations=5, linear_iterations=5)).write(tmp_path / "x.tfm")


def test_registration_rejects_bad_input(mni):
    template, _ = mni
    small = sitk.Shrink(template, [4, 4, 4])
    with pytest.raises(LdmonaiError, match="needs a 3D image.*2D") as err:
        register(small[:, :, 20], small, case="slice.png")
    assert "slice.png" in str(err.value)
    nan = sitk.Image(small)
    nan[5, 5, 5] = float("nan")
    with pytest.raises(LdmonaiError, match="NaN"):
        register(nan, small, case="nan_case")
    other_grid = sitk.Shrink(template, [5, 5, 5]) > 0
    with pytest.raises(LdmonaiError, match="not in the image's physical space"):
        register(small, small, fixed_mask=other_grid, case="mask_case")
    with pytest.raises(LdmonaiError, match="unknown registration kind"):
        RegistrationSettings(kind="syn")


def test_same_seed_same_result(mni):
    template, _ = mni
    small = sitk.Shrink(template, [3, 3, 3])
    moving = warps.warp_image(small, warps.random_affine(small, np.random.default_rng(1)))
    settings = RegistrationSettings(kind="affine", linear_resolutions=2, seed=7, threads=1)
    a = register(small, moving, settings).transform.GetParameters()
    b = register(small, moving, settings).transform.GetParameters()
    assert np.allclose(a, b)
