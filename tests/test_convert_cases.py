"""Conversion behaviour on synthetic and packaged DICOM: geometry, 4D, multi-frame, bad input."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from dicom_factory import (corrupt_copy, expected_affine, expected_array, make_volume, write_enhanced,
                           write_series)
from ldmonai import LdmonaiError
from ldmonai.prep import convert_series, convert_tree

OBLIQUE = (0.9848078, 0.1736482, 0.0, -0.1227878, 0.6963642, 0.7071068)  # 10 deg in-plane, 45 deg tilt


def _only(report):
    assert report.ok, report.summary()
    assert len(report.converted) == 1, report.summary()
    item = report.converted[0]
    return nib.load(item["nifti"]), json.loads(Path(item["sidecar"]).read_text())


def _digest(folder: Path) -> dict:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("orientation", [(1, 0, 0, 0, 1, 0), (0, 1, 0, 0, 0, -1), OBLIQUE],
                         ids=["axial", "sagittal", "oblique"])
def test_geometry_matches_simpleitk_and_truth(tmp_path, orientation):
    data = make_volume((7, 9, 11))
    write_series(tmp_path / "in", data, orientation=orientation)
    img, side = _only(convert_tree(tmp_path / "in", tmp_path / "out", progress=False))

    np.testing.assert_array_equal(np.asarray(img.dataobj), expected_array(data))
    truth = expected_affine((9, 11), (0.9, 1.1), 2.5, orientation, (-10.0, -20.0, 5.0))
    np.testing.assert_allclose(img.affine, truth, atol=1e-4)

    # Independent reader: SimpleITK's GDCM series reader, in LPS. Every voxel centre must agree.
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "in")))
    ref = reader.Execute()
    ref_arr = sitk.GetArrayFromImage(ref)  # (slices, rows, cols)
    # The index comparison below assumes SimpleITK also stacks along the increasing normal.
    step = np.array(ref.TransformIndexToPhysicalPoint((0, 0, 1))) - ref.GetOrigin()
    np.testing.assert_allclose(step, 2.5 * np.cross(orientation[:3], orientation[3:]), atol=1e-3)
    for i, j, k in [(0, 0, 0), (10, 8, 6), (3, 5, 2)]:
        ours_world = img.affine @ [i, j, k, 1]
        row = 8 - j  # our j runs against DICOM rows
        lps = np.array(ref.TransformIndexToPhysicalPoint((i, row, k)))
        np.testing.assert_allclose(ours_world[:3], lps * [-1, -1, 1], atol=1e-3)
        assert np.asarray(img.dataobj)[i, j, k] == ref_arr[k, row, i]
    assert side["ImageOrientationPatientDICOM"] == pytest.approx(list(orientation), abs=1e-5)


def test_time_series_is_4d_in_acquisition_order(tmp_path):
    data = make_volume((4, 5, 6), nt=3)
    write_series(tmp_path / "in", data, suffix="")  # no suffix, shuffled on disk
    img, side = _only(convert_tree(tmp_path / "in", tmp_path / "out", progress=False))
    assert img.shape == (6, 5, 4, 3)
    np.testing.assert_array_equal(np.asarray(img.dataobj), expected_array(data))
    assert img.header.get_zooms()[3] == pytest.approx(2.0)  # TR in seconds
    assert side["RepetitionTime"] == 2 and side["EchoTime"] == 0.01


def test_enhanced_multiframe_equals_classic(tmp_path):
    data = make_volume((5, 6, 7), nt=2)
    write_series(tmp_path / "classic", data, orientation=OBLIQUE)
    write_enhanced(tmp_path / "enhanced" / "mf.dcm", data, orientation=OBLIQUE)
    classic, _ = _only(convert_tree(tmp_path / "classic", tmp_path / "o1", progress=False))
    enhanced, _ = _only(convert_tree(tmp_path / "enhanced", tmp_path / "o2", progress=False))
    np.testing.assert_array_equal(np.asarray(enhanced.dataobj), np.asarray(classic.dataobj))
    np.testing.assert_allclose(enhanced.affine, classic.affine, atol=1e-4)


def test_multi_echo_splits_like_dcm2niix(tmp_path):
    uid = pydicom.uid.generate_uid()
    for echo, te in ((1, 10), (2, 25)):
        write_series(tmp_path / "in" / f"e{echo}", make_volume((3, 4, 5), seed=echo),
                     tags={"SeriesInstanceUID": uid, "EchoNumbers": echo, "EchoTime": te})
    report = convert_tree(tmp_path / "in", tmp_path / "out", progress=False)
    names = sorted(Path(c["nifti"]).name for c in report.converted)
    assert names == ["3_T1_axial_e1.nii.gz", "3_T1_axial_e2.nii.gz"]
    sides = {Path(c["sidecar"]).stem: json.loads(Path(c["sidecar"]).read_text()) for c in report.converted}
    assert sides["3_T1_axial_e2"]["EchoTime"] == 0.025 and sides["3_T1_axial_e2"]["EchoNumber"] == 2


def test_gantry_tilt_is_corrected_onto_an_orthogonal_grid(tmp_path):
    data = np.zeros((1, 6, 16, 16), np.int16)
    # A bright rod that is vertical in patient space: along a tilted stack it drifts one
    # column per slice in the raw images, and must be straight after correction.
    for k in range(6):
        data[0, k, 8, 4 + k] = 1000
    step = 1.1  # column spacing: one column of drift per slice
    write_series(tmp_path / "in", data, spacing=(1.0, step), dz=2.0, tilt_step=(-step, 0.0),
                 tags={"Modality": "CT", "GantryDetectorTilt": 28.8})
    img, side = _only(convert_tree(tmp_path / "in", tmp_path / "out", progress=False))
    arr = np.asarray(img.dataobj)
    cols = [int(np.argmax(arr[:, 16 - 1 - 8, k])) for k in range(6)]
    assert len(set(cols)) == 1, f"rod not straight after tilt correction: columns {cols}"
    assert side["GantryTiltCorrected"] == pytest.approx(np.degrees(np.arctan2(step, 2.0)), abs=0.01)
    assert np.allclose(img.affine[:3, 2], [0, 0, 2.0])  # orthogonal slice axis


def test_bad_cases_are_reported_and_the_batch_goes_on(tmp_path):
    good = write_series(tmp_path / "in" / "good", make_volume((4, 5, 6)), tags={"SeriesNumber": 1})
    write_series(tmp_path / "in" / "gap", make_volume((6, 5, 6)), skip={(0, 3)}, tags={"SeriesNumber": 2})
    write_series(tmp_path / "in" / "uneven", make_volume((4, 5, 6), nt=2), skip={(1, 2)}, tags={"SeriesNumber": 4})
    victim = write_series(tmp_path / "victim", make_volume((1, 5, 6)), tags={"SeriesNumber": 9})[0]
    corrupt_copy(victim, tmp_path / "in" / "bad" / "truncated.dcm", keep_bytes=victim.stat().st_size - 20)
    corrupt_copy(victim, tmp_path / "in" / "bad2" / "garbled", garbage_at=140)
    # A truncated duplicate of a good file must neither break nor replace the good series.
    corrupt_copy(good[0], tmp_path / "in" / "zz_copies" / "dup.dcm", keep_bytes=good[0].stat().st_size - 20)
    before = _digest(tmp_path / "in")

    report = convert_tree(tmp_path / "in", tmp_path / "out", progress=False)
    assert [Path(c["nifti"]).name for c in report.converted] == ["1_T1_axial.nii.gz"]
    reasons = {Path(f["path"]).parent.name: f["reason"] for f in report.failed}
    assert "inconsistent slice spacing" in reasons["gap"]
    assert "missing slices" in reasons["uneven"]
    assert "truncated" in reasons["bad"]
    assert "bad2" in reasons and reasons["bad2"]
    assert all(f.get("fix") for f in report.failed)
    assert [Path(d["path"]).name for d in report.duplicates] == ["dup.dcm"]
    saved = json.loads((tmp_path / "out" / "conversion_report.json").read_text())
    assert saved["ok"] is False and len(saved["failed"]) == 4
    assert _digest(tmp_path / "in") == before, "inputs were modified"

    cli = subprocess.run([sys.executable, "-m", "ldmonai", "prep", "convert", str(tmp_path / "in"),
                          str(tmp_path / "out2"), "--quiet"], capture_output=True, text=True)
    assert cli.returncode == 1
    assert "FAILED" in cli.stdout and "Traceback" not in cli.stdout + cli.stderr


def test_hostile_tags_cannot_escape_the_output_folder(tmp_path):
    hostile = [
        {"PatientID": "../../../../escape", "SeriesDescription": "../../x"},
        {"PatientID": "/etc", "SeriesDescription": "/tmp/abs\\path"},
        {"PatientID": "..", "SeriesDescription": "."},
        {"PatientID": "a\x00b\x1b[31m\nc", "SeriesDescription": "name\twith\rcontrol"},
        {"PatientID": "~", "SeriesDescription": "C:\\Windows\\system32"},
    ]
    for n, tags in enumerate(hostile):
        write_series(tmp_path / "in" / str(n), make_volume((2, 3, 4), seed=n), tags=dict(tags, SeriesNumber=n))
    out = tmp_path / "deep" / "out"
    out.parent.mkdir()
    outside_before = {p for p in tmp_path.rglob("*") if out not in p.parents and p != out}
    report = convert_tree(tmp_path / "in", out, template="{PatientID}/{SeriesDescription}/{SeriesNumber}",
                          progress=False)
    assert report.ok and len(report.converted) == len(hostile), report.summary()
    outside_after = {p for p in tmp_path.rglob("*") if out not in p.parents and p != out}
    assert outside_after == outside_before, "something was written outside OUT_DIR"
    for item in report.converted:
        rel = Path(item["nifti"]).resolve().relative_to(out.resolve())
        for part in rel.parts:
            assert part not in ("..", ".") and not part.startswith(".")
            assert all(ch.isalnum() or ch in "._=+-" for ch in part), part


def test_resume_skips_done_series_and_redoes_missing(tmp_path):
    for s in range(3):
        write_series(tmp_path / "in" / str(s), make_volume((3, 4, 5), seed=s), tags={"SeriesNumber": s + 1})
    first = convert_tree(tmp_path / "in", tmp_path / "out", progress=False)
    assert len(first.converted) == 3
    stamp = {c["nifti"]: os.stat(c["nifti"]).st_mtime_ns for c in first.converted}
    Path(first.converted[1]["sidecar"]).unlink()  # a series whose run died before its sidecar
    second = convert_tree(tmp_path / "in", tmp_path / "out", progress=False)
    assert len(second.skipped) == 2 and len(second.converted) == 1
    assert second.converted[0]["nifti"] == first.converted[1]["nifti"]
    for c in second.skipped:
        assert os.stat(c["nifti"]).st_mtime_ns == stamp[c["nifti"]]
    third = convert_tree(tmp_path / "in", tmp_path / "out", overwrite=True, progress=False)
    assert len(third.converted) == 3


def test_killed_run_leaves_no_partial_output_and_resumes(tmp_path):
    for s in range(12):
        write_series(tmp_path / "in" / str(s), make_volume((24, 64, 64), seed=s), tags={"SeriesNumber": s + 1})
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "ldmonai", "prep", "convert", str(tmp_path / "in"), str(out),
                             "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and not list(out.rglob("*.json")):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finals = [p for p in out.rglob("*.nii.gz") if not p.name.startswith(".")]
    for p in finals:
        assert nib.load(p).get_fdata().shape == (64, 64, 24), f"partial file under a final name: {p}"
    resumed = convert_tree(tmp_path / "in", out, progress=False)
    assert resumed.ok and len(resumed.converted) + len(resumed.skipped) == 12
    assert not [p for p in out.rglob("*") if ".ldmonai-tmp" in p.name], "temporaries left behind"


def _pydicom_files() -> Path:
    """Sample files that ship inside the pydicom wheel (installed from the registry)."""
    import pydicom.data

    return Path(pydicom.data.__file__).parent / "test_files"


def test_packaged_dicomdir_tree_converts(tmp_path):
    root = _pydicom_files() / "dicomdirtests"
    report = convert_tree(root, tmp_path / "out", workers=2, progress=False)
    assert report.ok, report.summary()
    assert len(report.converted) >= 20  # CT, MR and CR series of several patients
    shapes = [tuple(c["shape"]) for c in report.converted]
    assert any(len(s) == 3 and s[2] > 1 for s in shapes)


@pytest.mark.parametrize("name", ["MR_small_RLE", "MR_small_jp2klossless", "MR_small_jpeg_ls_lossless",
                                  "MR_small_bigendian", "MR_small_implicit"])
def test_compressed_and_legacy_syntaxes_decode_to_identical_voxels(tmp_path, name):
    root = _pydicom_files()
    ref = nib.load(convert_series(root / "MR_small.dcm", tmp_path / "ref")[0])
    other = nib.load(convert_series(root / f"{name}.dcm", tmp_path / "other")[0])
    np.testing.assert_array_equal(np.asarray(other.dataobj), np.asarray(ref.dataobj))
    np.testing.assert_allclose(other.affine, ref.affine)


def test_undecodable_pixel_data_gets_a_clear_error(tmp_path):
    src = _pydicom_files() / "MR_small_jp2klossless.dcm"
    ds = pydicom.dcmread(src)
    (tmp_path / "in").mkdir()
    ds.file_meta.TransferSyntaxUID = "1.2.826.0.1.3680043.9.9999.1"  # a vendor syntax nobody decodes
    ds.save_as(tmp_path / "in" / "x.dcm", implicit_vr=False, little_endian=True)
    report = convert_tree(tmp_path / "in", tmp_path / "out", progress=False)
    assert not report.ok
    failure = report.failed[0]
    assert "could not be decoded" in failure["reason"] and "x.dcm" in failure["path"]
    assert "decoder" in failure["fix"]


def test_empty_and_missing_inputs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LdmonaiError, match="empty"):
        convert_tree(tmp_path / "empty", tmp_path / "out")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "notes.txt").write_text("not dicom")
    with pytest.raises(LdmonaiError, match="no DICOM images"):
        convert_tree(tmp_path / "text", tmp_path / "out")
    with pytest.raises(LdmonaiError, match="does not exist"):
        convert_tree(tmp_path / "nope", tmp_path / "out")
    with pytest.raises(LdmonaiError, match="inside the input"):
        convert_tree(tmp_path / "text", tmp_path / "text" / "out")
