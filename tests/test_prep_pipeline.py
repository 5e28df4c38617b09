"""Preprocessing steps, pipelines, MONAI transforms and the CLI on real scans:
MNI152 and its labels (../shared), and the dcm_qa_nih DICOM after ldmonai's own conversion."""

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from ldmonai.cli import main
from ldmonai.errors import LdmonaiError
from ldmonai.io.atomic import TMP_MARK
from ldmonai.prep.bias_field import coefficient_of_variation, n4_bias_correct
from ldmonai.prep.image import read_image, write_image
from ldmonai.prep.intensity import ct_window, percentile_clip, zscore
from ldmonai.prep.pipeline import load_config, run_pipeline
from ldmonai.prep.resample import reorient, resample_to_spacing

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small_mni(ants_sample, tmp_path_factory):
    """MNI152 and its labels at 2 mm (LAS, as shipped), written once for the file-based tests."""
    folder = tmp_path_factory.mktemp("mni2mm")
    image = sitk.Shrink(read_image(ants_sample / "mni.nii.gz"), [2, 2, 2])
    labels = sitk.Shrink(read_image(ants_sample / "mnia.nii.gz", label=True), [2, 2, 2])
    write_image(image, folder / "sub-01_ses-2_T1w.nii.gz")
    write_image(labels, folder / "labels.nii.gz")
    return folder / "sub-01_ses-2_T1w.nii.gz", folder / "labels.nii.gz"


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def test_reorient_to_ras_keeps_world_positions(small_mni):
    image = read_image(small_mni[0])
    assert nib.aff2axcodes(nib.load(str(small_mni[0])).affine) == ("L", "A", "S")
    ras = reorient(image, "RAS")
    out = Path(small_mni[0]).parent / "ras.nii.gz"
    write_image(ras, out)
    assert nib.aff2axcodes(nib.load(str(out)).affine) == ("R", "A", "S")
    for index in ([10, 20, 30], [50, 60, 40]):
        point = image.TransformIndexToPhysicalPoint(index)
        assert ras[ras.TransformPhysicalPointToIndex(point)] == image[index]
    with pytest.raises(LdmonaiError, match="orientation code"):
        reorient(image, "RAX")


def test_resample_keeps_field_of_view_and_label_values(small_mni):
    labels = read_image(small_mni[1], label=True)
    out = resample_to_spacing(labels, [3.0, 3.0, 4.0], "nearest")
    assert out.GetSpacing() == (3.0, 3.0, 4.0)
    extent = np.array(labels.GetSize()) * labels.GetSpacing()
    assert np.allclose(np.array(out.GetSize()) * out.GetSpacing(), extent, atol=4.0)
    assert set(np.unique(sitk.GetArrayViewFromImage(out))) <= set(np.unique(sitk.GetArrayViewFromImage(labels)))
    # The first voxel's outer corner stays where it was.
    corner = lambda im: np.array(im.TransformContinuousIndexToPhysicalPoint([-0.5, -0.5, -0.5]))  # noqa: E731
    assert np.allclose(corner(out), corner(labels), atol=1e-6)
    with pytest.raises(LdmonaiError, match="spacing must be positive"):
        resample_to_spacing(labels, 0.0)


def test_resample_single_slice_and_localiser():
    """Thin inputs (one slice, a 2-voxel localiser) resample without ITK's 4-voxel smoothing limit."""
    rng = np.random.default_rng(0)
    for size in [(64, 48, 1), (2, 40, 30)]:
        image = sitk.GetImageFromArray(rng.random(size[::-1]).astype(np.float32))
        image.SetSpacing((0.5, 0.5, 5.0))
        out = resample_to_spacing(image, 1.0)
        expected = np.maximum(1, np.round(np.array(size) * np.array([0.5, 0.5, 5.0]))).astype(int)
        assert out.GetSize() == tuple(int(v) for v in expected)
        assert np.isfinite(sitk.GetArrayViewFromImage(out)).all()


def test_n4_removes_a_known_bias_field(small_mni):
    image = read_image(small_mni[0])
    array = sitk.GetArrayFromImage(image)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in array.shape], indexing="ij")
    field = np.exp(0.35 * x + 0.25 * y - 0.2 * z * x)  # smooth, up to about +-50 %
    biased = sitk.GetImageFromArray((array * field).astype(np.float32))
    biased.CopyInformation(image)
    # Judge on white matter: the brightest third of the brain in the unbiased image, one tissue.
    brain = array > 0
    wm = sitk.GetImageFromArray((array > np.percentile(array[brain], 67)).astype(np.uint8))
    wm.CopyInformation(image)
    corrected, bias = n4_bias_correct(biased, sitk.Cast(image > 0, sitk.sitkUInt8), shrink=2)
    before, after, truth = (coefficient_of_variation(im, wm) for im in (biased, corrected, image))
    assert after < 0.6 * before, (before, after, truth)
    assert bias.GetSize() == image.GetSize()


def test_intensity_normalisation(small_mni):
    image = read_image(small_mni[0])
    z = sitk.GetArrayFromImage(zscore(image))
    inside = sitk.GetArrayFromImage(image) != 0
    assert abs(z[inside].mean()) < 1e-3 and abs(z[inside].std() - 1) < 1e-3 and (z[~inside] == 0).all()
    clipped = sitk.GetArrayFromImage(percentile_clip(image, 1, 99))
    assert clipped.min() == 0.0 and clipped.max() == 1.0
    hu = sitk.GetImageFromArray(np.linspace(-1200, 1200, 100).reshape(1, 1, 100).astype(np.float32))
    window = sitk.GetArrayFromImage(ct_window(hu, "brain"))
    assert window.min() == 0 and window.max() == 1 and ((window > 0) & (window < 1)).sum() == 3  # 80 HU of 2400
    with pytest.raises(LdmonaiError, match="unknown CT window"):
        ct_window(hu, "lungs")
    with pytest.raises(LdmonaiError, match="mask is empty"):
        zscore(image * 0)


def test_pipeline_on_converted_dicom(dcm_qa_nih, tmp_path):
    """The real DICOM series, converted by ldmonai, then preprocessed: RAS, 2 mm, N4, z-score."""
    from ldmonai.prep.dicom import convert_tree

    converted = convert_tree(dcm_qa_nih / "In", tmp_path / "nifti", progress=False)
    assert converted.ok and converted.converted
    config = [{"step": "volume", "reduce": "mean"}, {"step": "reorient"}, {"step": "resample", "spacing": 2.0},
              {"step": "n4", "shrink": 2}, {"step": "normalize", "method": "zscore"}]
    report = run_pipeline(config, tmp_path / "nifti", tmp_path / "prep", progress=False)
    assert report.ok and len(report.done) == len(converted.converted), report.summary()
    for case in report.done:
        source = nib.load(str(next((tmp_path / "nifti").rglob(f"{case}.nii*"))))
        out = nib.load(str(tmp_path / "prep" / case / f"{case}_image.nii.gz"))
        assert nib.aff2axcodes(out.affine) == ("R", "A", "S")
        assert np.allclose(out.header.get_zooms()[:3], 2.0)
        # Same field of view in the scanner's space: the volume centre does not move.
        centre = lambda img: img.affine @ np.r_[(np.array(img.shape[:3]) - 1) / 2.0, 1]  # noqa: E731
        assert np.allclose(centre(out)[:3], centre(source)[:3], atol=1.5)
    # Without the 'volume' step a 4D series gets a clear error, not an ITK failure.
    bad = run_pipeline([{"step": "reorient"}], tmp_path / "nifti", tmp_path / "prep4d", progress=False)
    assert len(bad.failed) == len(converted.converted)
    assert "4D" in bad.failed[0]["reason"] and "step: volume" in bad.failed[0]["fix"]


def test_slices_with_participant_metadata(small_mni, tmp_path):
    participants = tmp_path / "participants.tsv"
    participants.write_text("participant_id\tage\tsex\tdiagnosis\nsub-01\t77\tF\tMCI\nsub-02\t70\tM\tCN\n")
    config = [{"step": "slices", "axis": "axial", "every": 5, "min_foreground": 0.1}]
    report = run_pipeline(config, small_mni[0], tmp_path / "out", participants=participants, progress=False)
    assert report.ok, report.summary()
    rows = json.loads((tmp_path / "out" / "slices_index.json").read_text())
    assert rows and {"age", "sex", "diagnosis", "subject", "visit", "png", "nifti", "index"} <= set(rows[0])
    assert rows[0]["age"] == "77" and rows[0]["diagnosis"] == "MCI" and rows[0]["visit"] == "ses-2"
    header = (tmp_path / "out" / "slices_index.csv").read_text().splitlines()[0].split(",")
    assert "age" in header and "png" in header
    volume = reorient(read_image(small_mni[0]), "RAS")
    row = rows[len(rows) // 2]
    png = sitk.ReadImage(str(tmp_path / "out" / row["png"]))
    assert png.GetSize() == (volume.GetSize()[0], volume.GetSize()[1])
    one = sitk.ReadImage(str(tmp_path / "out" / row["nifti"]))
    # The one-slice NIfTI sits where the slice sits in the volume.
    assert np.allclose(one.GetOrigin(), volume.TransformIndexToPhysicalPoint([0, 0, row["index"]]), atol=1e-4)
    assert np.allclose(sitk.GetArrayFromImage(one)[0], sitk.GetArrayFromImage(volume)[row["index"]])


def test_batch_goes_on_past_bad_cases_and_resumes(small_mni, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    good = read_image(small_mni[0])
    write_image(good, src / "good.nii.gz")
    nan = sitk.GetArrayFromImage(good).transpose()
    nan[20:30, 20:30, 20:30] = np.nan  # nibabel keeps NaN on disk (ITK's writer zeroes them)
    nib.save(nib.Nifti1Image(nan, np.diag([2.0, 2.0, 2.0, 1.0])), str(src / "nan_filled.nii.gz"))
    (src / "corrupt.nii.gz").write_bytes(b"\x1f\x8b not really a gzip file")
    # cut mid-voxels: ITK reads it without a word (zero-filled), so the file itself is checked
    (src / "truncated.nii.gz").write_bytes((src / "good.nii.gz").read_bytes()[:-2000])
    write_image(good[:, :, 40], src / "flat2d.nii.gz")
    before = _digest(src)
    config = [{"step": "reorient"}, {"step": "resample", "spacing": 4.0}, {"step": "normalize"},
              {"step": "slices", "every": 4}]
    report = run_pipeline(config, src, tmp_path / "out", progress=False)
    assert report.done == ["good"]
    failed = {f["case"]: f for f in report.failed}
    assert set(failed) == {"nan_filled", "corrupt", "truncated", "flat2d"}
    assert "truncated" in failed["truncated"]["reason"] and "unexpected" not in failed["truncated"]["reason"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_dir()) == ["good"]  # failed cases leave no folder
    assert "NaN" in failed["nan_filled"]["reason"] and failed["nan_filled"]["path"].endswith("nan_filled.nii.gz")
    assert "cannot read" in failed["corrupt"]["reason"]
    assert "needs a 3D image" in failed["flat2d"]["reason"]
    saved = json.loads((tmp_path / "out" / "prep_report.json").read_text())
    assert len(saved["failed"]) == 4 and not saved["ok"]
    assert _digest(src) == before  # inputs untouched
    assert not list((tmp_path / "out").rglob(f"*{TMP_MARK}*"))  # no half-written output
    again = run_pipeline(config, src, tmp_path / "out", progress=False)
    assert again.skipped == ["good"] and not again.done
    changed = run_pipeline(config[:-1], src, tmp_path / "out", progress=False)
    assert changed.done == ["flat2d", "good"]  # another config is not 'finished'; 2D is fine without slices


def test_pipeline_config_errors(tmp_path):
    for path in sorted((ROOT / "configs" / "prep").glob("*.yaml")):
        assert load_config(path)["steps"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps:\n  - step: n4\n  - step: denoise\n")
    with pytest.raises(LdmonaiError, match="unknown step 'denoise'") as err:
        load_config(bad)
    assert str(bad) in str(err.value)
    bad.write_text("steps:\n  - step: resample\n    spacin: 2\n")
    with pytest.raises(LdmonaiError, match="no option.*spacin"):
        load_config(bad)
    bad.write_text("steps: [unclosed\n")
    with pytest.raises(LdmonaiError, match="cannot parse"):
        load_config(bad)
    bad.write_text("name: empty\n")
    with pytest.raises(LdmonaiError, match="non-empty 'steps'"):
        load_config(bad)
    with pytest.raises(LdmonaiError, match="folder holds no images"):
        run_pipeline([{"step": "reorient"}], tmp_path, tmp_path / "out")


def test_monai_transforms_keep_physical_space(small_mni, tmp_path, monkeypatch):
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, SaveImaged

    from ldmonai.prep.transforms import PrepStepd, ResampleToSpacingd, metatensor_to_sitk

    loaded = Compose([LoadImaged("image"), EnsureChannelFirstd("image")])({"image": str(small_mni[0])})
    bridged = metatensor_to_sitk(loaded["image"])
    reference = sitk.ReadImage(str(small_mni[0]))
    assert np.allclose(bridged.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    assert np.allclose(bridged.GetDirection(), reference.GetDirection(), atol=1e-6)
    assert np.allclose(bridged.GetSpacing(), reference.GetSpacing())
    assert np.array_equal(sitk.GetArrayViewFromImage(bridged), sitk.GetArrayViewFromImage(reference).astype(np.float32))

    chain = Compose([ResampleToSpacingd("image", spacing=4.0), PrepStepd("image", {"step": "normalize"}),
                     SaveImaged("image", output_dir=str(tmp_path), output_postfix="prep", separate_folder=False,
                                print_log=False)])
    out = chain(dict(loaded))["image"]
    expected = resample_to_spacing(read_image(small_mni[0]), 4.0)
    assert tuple(out.shape[1:]) == expected.GetSize()
    saved = sitk.ReadImage(str(next(tmp_path.glob("*_prep.nii.gz"))))
    assert np.allclose(saved.GetOrigin(), expected.GetOrigin(), atol=1e-3)
    assert np.allclose(saved.GetSpacing(), expected.GetSpacing(), atol=1e-4)
    # A step's own files (here the N4 bias field) go to output_dir only; never to the working folder.
    from ldmonai.prep.transforms import BiasFieldCorrectiond

    monkeypatch.chdir(tmp_path)
    BiasFieldCorrectiond("image", save_field=True, shrink=4)(dict(loaded))
    assert not list(tmp_path.glob("*biasfield*"))
    BiasFieldCorrectiond("image", save_field=True, shrink=4, output_dir=str(tmp_path / "fields"))(dict(loaded))
    assert [p.name for p in (tmp_path / "fields").iterdir()] == ["sub-01_ses-2_T1w_biasfield.nii.gz"]
    with pytest.raises(Exception) as err:
        ResampleToSpacingd("image", spacing=2.0)({"image": np.zeros((2, 4, 4, 4), np.float32)})
    assert "one-channel" in str(err.value) or "one-channel" in str(err.value.__cause__)


def test_cli_prep_commands(small_mni, tmp_path, capsys):
    src = Path(small_mni[0]).parent
    assert main(["prep", "resample", str(small_mni[0]), str(tmp_path / "iso"), "--spacing", "4", "--quiet"]) == 0
    assert (tmp_path / "iso" / "sub-01_ses-2_T1w" / "sub-01_ses-2_T1w_image.nii.gz").is_file()
    assert "1 cases done" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps:\n  - step: blur\n")
    assert main(["prep", "run", str(bad), str(src), str(tmp_path / "x")]) == 2  # a bad config is a bad argument
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown step 'blur'" in err[0]
    with pytest.raises(SystemExit) as exit_info:
        main(["prep", "register", "--help"])
    assert exit_info.value.code == 0
    assert "--labels" in capsys.readouterr().out


def test_pipeline_runs_on_a_dask_local_cluster_like_local_workers(small_mni, tmp_path):
    """`ldmonai prep run --scheduler local`: the same case task on a real distributed.LocalCluster
    (2 worker processes on loopback) writes the same files as the local process pool, goes on past
    a bad case, and resumes."""
    pytest.importorskip("distributed")
    src = tmp_path / "in"
    src.mkdir()
    image = read_image(small_mni[0])
    write_image(image, src / "sub-01_T1w.nii.gz")
    write_image(sitk.Flip(image, [True, False, False]), src / "sub-02_T1w.nii.gz")
    (src / "sub-03_T1w.nii.gz").write_bytes(b"\x1f\x8b not really a gzip file")
    config = [{"step": "reorient"}, {"step": "resample", "spacing": 4.0}, {"step": "normalize"}]
    local = run_pipeline(config, src, tmp_path / "local", workers=2, progress=False)
    dask = run_pipeline(config, src, tmp_path / "dask", workers=2, scheduler="local", progress=False)
    assert dask.done == local.done == ["sub-01_T1w", "sub-02_T1w"]
    assert [f["case"] for f in dask.failed] == ["sub-03_T1w"]
    for case in dask.done:
        a = nib.load(tmp_path / "local" / case / f"{case}_image.nii.gz")
        b = nib.load(tmp_path / "dask" / case / f"{case}_image.nii.gz")
        np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
        np.testing.assert_array_equal(a.affine, b.affine)
    again = run_pipeline(config, src, tmp_path / "dask", workers=2, scheduler="local", progress=False)
    assert again.skipped == ["sub-01_T1w", "sub-02_T1w"] and not again.done
