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

from dicom_factory import (corrupt_copy, expected_affine, expected_array, make_volume,                            write_series)
from ldmonai import LdmonaiError
from ldmonai.errors import UsageError
from ldmonai.prep import convert_series, convert_tree
from ldmonai.prep.dicom import engine

OBLIQUE = (0.9848078, 0.1736482, 0.0, -0.1227878, 0.6963642, 0.7071068)  # 10 deg in-plane, 45 deg tilt


def _niftis(report) -> list[Path]:
    return sorted(Path(p) for c in report.converted for p in c["outputs"] if p.endswith((".nii", ".nii.gz")))


def _only(report, name_endswith: str = ""):
    assert report.ok, report.summary()
    assert len(report.converted) == 1, report.summary()
    nii = [p for p in _niftis(report) if p.name.split(".")[0].endswith(name_endswith)]
    assert len(nii) >= 1, report.converted
    nii = min(nii, key=lambda p: len(p.name))
    side = nii.with_name(nii.name.split(".")[0] + ".json")
    return nib.load(nii), json.loads(side.read_text())


def _digest(folder: Path) -> dict:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _tree(root: Path) -> dict:
    """Relative path -> bytes of every output, without ldmonai's own state and report."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
            and not any(x.startswith(".") for x in p.relative_to(root).parts) and p.name != "conversion_report.json"}


def _direct(in_dir: Path, out: Path, *opts: str) -> dict:
    """What the pinned dcm2niix binary writes for the whole tree in one call."""
    out.mkdir(parents=True)
    subprocess.run([engine.binary(), "-b", "y", "-z", "n", *opts, "-o", str(out), str(in_dir)], check=True,
                   capture_output=True)
    return _tree(out)


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


def _mixed_tree(root: Path) -> None:
    """Series that make dcm2niix split, add suffixes and clash names: two echoes of one series,
    a tilted CT, a 4D series, an oblique one, and two series with the same protocol and number."""
    uid = pydicom.uid.generate_uid()
    for echo, te in ((1, 10), (2, 25)):
        write_series(root / f"echo{echo}", make_volume((3, 4, 5), seed=echo),
                     tags={"SeriesInstanceUID": uid, "EchoNumbers": echo, "EchoTime": te})
    rod = np.zeros((1, 6, 16, 16), np.int16)
    rod[0, :, 8, 4:10] = 1000
    write_series(root / "tilt", rod, spacing=(1.0, 1.1), dz=2.0, tilt_step=(-1.1, 0.0),
                 tags={"Modality": "CT", "GantryDetectorTilt": 28.8, "SeriesNumber": 7})
    write_series(root / "fmri", make_volume((4, 5, 6), nt=3), tags={"SeriesNumber": 8})
    write_series(root / "oblique", make_volume((5, 6, 7)), orientation=OBLIQUE, tags={"SeriesNumber": 9})
    for n in range(2):
        write_series(root / f"twin{n}", make_volume((3, 4, 5), seed=10 + n),
                     tags={"SeriesNumber": 11, "ProtocolName": "twin"})


@pytest.mark.parametrize("workers", [1, 2])
def test_outputs_are_byte_for_byte_a_direct_dcm2niix_call(tmp_path, workers):
    """One dcm2niix call per series, in parallel, gives the very files of one call on the tree:
    echo suffixes, the tilt-corrected copy, 4D, and dcm2niix's letter for a clashing name."""
    _mixed_tree(tmp_path / "in")
    ref = _direct(tmp_path / "in", tmp_path / "direct", "-f", "%f_%p_%s_%e")
    report = convert_tree(tmp_path / "in", tmp_path / "out", template="%f_%p_%s_%e", compress=False,
                          workers=workers, progress=False)
    assert report.ok, report.summary()
    assert _tree(tmp_path / "out") == ref
    names = set(ref)
    assert {"in_T1_axial_3_2.nii", "in_twin_11_0.nii", "in_twin_11_0a.nii"} <= names, sorted(names)
    assert any("_Tilt_1" in n for n in names), sorted(names)


def _calls(monkeypatch) -> list[list[str]]:
    """Record every dcm2niix command line the engine runs."""
    calls, real = [], engine.subprocess.run

    def spy(cmd, *args, **kwargs):
        calls.append(cmd)
        return real(cmd, *args, **kwargs)

    monkeypatch.setattr(engine.subprocess, "run", spy)
    return calls


@pytest.mark.parametrize("template", ["{PatientID}/{SeriesNumber}_{ProtocolName}", "%f_%p_%s_%e", "scan"])
def test_series_sharing_a_call_get_the_files_of_calls_of_their_own(tmp_path, monkeypatch, template):
    """Several series in one dcm2niix call (``%j/`` folders, then each series' own name) give the
    very files that one call per series gives: known answer, dcm2niix's own per-series output, for
    ldmonai names (the ``x`` placeholder), dcm2niix names, and one name for every series (letters)."""
    _mixed_tree(tmp_path / "in")
    calls = _calls(monkeypatch)
    shared = convert_tree(tmp_path / "in", tmp_path / "shared", template=template, compress=False, workers=2,
                          progress=False)
    assert shared.ok, shared.summary()
    assert len(calls) == 2, "six series on two workers: two dcm2niix calls"
    assert all(c[c.index("-f") + 1].startswith("%j/") for c in calls)
    with monkeypatch.context() as m:
        m.setattr(engine, "batch_name", lambda names: None)  # one call per series, as before batches
        alone = convert_tree(tmp_path / "in", tmp_path / "alone", template=template, compress=False, workers=2,
                             progress=False)
    assert len(calls) == 2 + 6
    assert _tree(tmp_path / "shared") == _tree(tmp_path / "alone")
    assert len(_tree(tmp_path / "shared")) >= 14  # echoes, the tilt copy, the clashing twins
    if template == "scan":
        assert {"scan.nii", "scana.nii", "scanb.nii"} <= set(_tree(tmp_path / "shared"))
    assert [len(c["outputs"]) for c in shared.converted] == [len(c["outputs"]) for c in alone.converted]


def test_the_nih_set_takes_one_dcm2niix_call_per_worker(tmp_path, monkeypatch, dcm_qa_nih):
    """Small inputs are packed into as many calls as workers, each call's series whole; the files
    are dcm2niix's own for the whole tree."""
    calls = _calls(monkeypatch)
    report = convert_tree(dcm_qa_nih / "In", tmp_path / "out", template="%p_%s", compress=False, workers=2,
                          progress=False)
    assert report.ok and len(report.converted) == 8, report.summary()
    assert len(calls) == 2
    listed = [Path(c[-1]).read_text().split() if Path(c[-1]).exists() else None for c in calls]
    assert listed == [None, None]  # the private list files are gone with the temporary folder
    assert _tree(tmp_path / "out") == _direct(dcm_qa_nih / "In", tmp_path / "direct", "-f", "%p_%s")


def test_gantry_tilt_copy_is_corrected_onto_an_orthogonal_grid(tmp_path):
    """Known answer: a gantry tilted about the x axis shifts each slice 1 mm along y; a rod that is
    vertical in patient space therefore drifts one row per slice in the raw images and must be
    straight, on an orthogonal grid, in dcm2niix's ``_Tilt_1`` output."""
    data = np.zeros((1, 6, 16, 16), np.int16)
    for k in range(6):
        data[0, k, 4 + k, 8] = 1000
    write_series(tmp_path / "in", data, spacing=(1.0, 1.0), dz=2.0, tilt_step=(0.0, -1.0),
                 tags={"Modality": "CT", "GantryDetectorTilt": float(np.degrees(np.arctan2(1.0, 2.0)))})
    report = convert_tree(tmp_path / "in", tmp_path / "out", progress=False)
    tilted = [p for p in _niftis(report) if "_Tilt_1" in p.name]
    assert len(tilted) == 1, _niftis(report)
    img = nib.load(tilted[0])
    arr = np.asarray(img.dataobj)
    rod = {tuple(np.argwhere(arr[:, :, k] > 300)[0]) for k in range(arr.shape[2])}
    assert len(rod) == 1, f"rod not straight after tilt correction: {rod}"
    raw = np.asarray(nib.load([p for p in _niftis(report) if "_Tilt_" not in p.name][0]).dataobj)
    assert len({tuple(np.argwhere(raw[:, :, k] > 300)[0]) for k in range(6)}) == 6  # the raw stack drifts
    np.testing.assert_allclose(np.abs(img.affine[:3, 2]), [0, 0, 2.0], atol=1e-3)  # orthogonal slice axis


def test_bad_cases_are_reported_and_the_batch_goes_on(tmp_path):
    write_series(tmp_path / "in" / "good", make_volume((4, 5, 6)), tags={"SeriesNumber": 1})
    victim = write_series(tmp_path / "victim", make_volume((1, 5, 6)), tags={"SeriesNumber": 9})[0]
    corrupt_copy(victim, tmp_path / "in" / "bad" / "header_cut.dcm", keep_bytes=300)  # the index sees it
    corrupt_copy(victim, tmp_path / "in" / "bad2" / "pixels_cut.dcm", keep_bytes=victim.stat().st_size - 20)  # dcm2niix does
    before = _digest(tmp_path / "in")

    report = convert_tree(tmp_path / "in", tmp_path / "out", progress=False)
    assert [p.name for p in _niftis(report)] == ["1_T1_axial.nii.gz"]
    failed = {Path(f["path"]).name: f for f in report.failed}
    assert set(failed) == {"header_cut.dcm", "bad2"}, report.failed
    assert "truncated" in failed["header_cut.dcm"]["reason"]
    # dcm2niix's own words, naming the input file (not ldmonai's private link to it)
    assert str(tmp_path / "in" / "bad2" / "pixels_cut.dcm") in failed["bad2"]["reason"]
    assert "not large enough" in failed["bad2"]["reason"]
    assert all(f["fix"] for f in report.failed)
    saved = json.loads((tmp_path / "out" / "conversion_report.json").read_text())
    assert saved["ok"] is False and len(saved["failed"]) == 2
    assert _digest(tmp_path / "in") == before, "inputs were modified"

    cli = subprocess.run([sys.executable, "-m", "ldmonai", "prep", "convert", str(tmp_path / "in"),
                          str(tmp_path / "out2"), "--quiet"], capture_output=True, text=True)
    assert cli.returncode == 1
    text = cli.stdout + cli.stderr
    assert text.count("header_cut.dcm") == 1, f"each failure must be printed once:\n{text}"
    assert text.count("pixels_cut.dcm") == 1, f"each failure must be printed once:\n{text}"
    assert "Traceback" not in text


def test_a_series_dcm2niix_cannot_convert_fails_with_its_message(tmp_path, monkeypatch):
    """dcm2niix's own failure (here: a binary that exits 1 after an error line) lands in the
    report with the series folder, dcm2niix's message and a fix; the other series go on."""
    write_series(tmp_path / "in" / "a", make_volume((3, 4, 5)), tags={"SeriesNumber": 1})
    fake = tmp_path / "fake_dcm2niix"
    fake.write_text("#!/bin/sh\necho 'Error: Unable to decompress this image' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(engine, "binary", lambda: str(fake))
    report = convert_tree(tmp_path / "in", tmp_path / "out", progress=False)
    assert not report.ok and not report.converted
    failure = report.failed[0]
    assert failure["path"].endswith("/a") and "Unable to decompress" in failure["reason"] and failure["fix"]


def test_hostile_tags_cannot_escape_the_output_folder(tmp_path):
    hostile = [
        {"PatientID": "../../../../escape", "SeriesDescription": "../../x"},
        {"PatientID": "/etc", "SeriesDescription": "/tmp/abs\\path"},
        {"PatientID": "..", "SeriesDescription": "."},
        {"PatientID": "a\x00b\x1b[31m\nc", "SeriesDescription": "name\twith\rcontrol"},
        {"PatientID": "~", "SeriesDescription": "C:\\Windows\\system32 %s %p"},
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
    for nii in _niftis(report):
        rel = nii.resolve().relative_to(out.resolve())
        for part in rel.parts:
            assert part not in ("..", ".") and not part.startswith(".")
            assert all(ch.isalnum() or ch in "._=+-" for ch in part), part


def test_resume_skips_done_series_and_redoes_missing(tmp_path):
    for s in range(3):
        write_series(tmp_path / "in" / str(s), make_volume((3, 4, 5), seed=s), tags={"SeriesNumber": s + 1})
    first = convert_tree(tmp_path / "in", tmp_path / "out", progress=False)
    assert len(first.converted) == 3
    stamp = {p: os.stat(p).st_mtime_ns for p in _niftis(first)}
    redo = first.converted[1]
    for p in redo["outputs"]:  # a series whose outputs were lost
        Path(p).unlink()
    second = convert_tree(tmp_path / "in", tmp_path / "out", progress=False)
    assert len(second.skipped) == 2 and len(second.converted) == 1
    assert second.converted[0]["outputs"] == redo["outputs"]
    for c in second.skipped:
        for p in c["outputs"]:
            if p.endswith(".nii.gz"):
                assert os.stat(p).st_mtime_ns == stamp[Path(p)]
    third = convert_tree(tmp_path / "in", tmp_path / "out", overwrite=True, progress=False)
    assert len(third.converted) == 3
    assert sorted(p.name for p in (tmp_path / "out").rglob("*.nii.gz")) == ["1_T1_axial.nii.gz", "2_T1_axial.nii.gz",
                                                                            "3_T1_axial.nii.gz"]


def _big_tree(root: Path, n: int = 12) -> None:
    for s in range(n):
        write_series(root / str(s), make_volume((24, 64, 64), seed=s), tags={"SeriesNumber": s + 1})


def test_killed_run_leaves_no_partial_output_and_resumes(tmp_path):
    _big_tree(tmp_path / "in")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "ldmonai", "prep", "convert", str(tmp_path / "in"), str(out),
                             "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and not list(out.rglob("*.json")):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finals = [p for p in out.rglob("*.nii.gz") if not any(x.startswith(".") for x in p.relative_to(out).parts)]
    for p in finals:
        assert nib.load(p).get_fdata().shape == (64, 64, 24), f"partial file under a final name: {p}"
    resumed = convert_tree(tmp_path / "in", out, progress=False)
    assert resumed.ok and len(resumed.converted) + len(resumed.skipped) == 12
    assert len(list(out.rglob("*.nii.gz"))) == 12
    assert not (out / engine.TMP_DIR).exists(), "temporaries left behind"


def test_kill_9_leaves_no_orphaned_workers(tmp_path):
    """SIGKILL on the command must take its worker processes and their dcm2niix calls along."""
    psutil = pytest.importorskip("psutil")
    _big_tree(tmp_path / "in", 16)
    proc = subprocess.Popen([sys.executable, "-m", "ldmonai", "prep", "convert", str(tmp_path / "in"),
                             str(tmp_path / "out"), "--workers", "2", "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parent = psutil.Process(proc.pid)
    seen: dict[int, float] = {}
    deadline = time.time() + 60
    while time.time() < deadline and len(seen) < 3:  # 2 workers and at least one dcm2niix
        try:
            for child in parent.children(recursive=True):
                seen.setdefault(child.pid, child.create_time())
        except psutil.NoSuchProcess:
            break
        time.sleep(0.005)
    assert len(seen) >= 2, "the workers never started"
    proc.kill()
    proc.wait()
    time.sleep(1.0)
    alive = []
    for pid, created in seen.items():
        try:
            p = psutil.Process(pid)
            if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                alive.append((pid, p.name()))
        except psutil.NoSuchProcess:
            pass
    assert not alive, f"orphaned after kill -9: {alive}"


def _pydicom_files() -> Path:
    """Sample files that ship inside the pydicom wheel (installed from the registry)."""
    import pydicom.data

    return Path(pydicom.data.__file__).parent / "test_files"


def test_packaged_dicomdir_tree_converts(tmp_path):
    root = _pydicom_files() / "dicomdirtests"
    report = convert_tree(root, tmp_path / "out", workers=2, progress=False)
    assert report.ok, report.summary()
    assert len(report.converted) >= 10  # CT, MR and CR series of several patients
    assert any(len(nib.load(p).shape) == 3 and nib.load(p).shape[2] > 1 for p in _niftis(report))
    convert_tree(root, tmp_path / "same", template="%f_%p_%t_%s", compress=False, workers=2, progress=False)
    assert _tree(tmp_path / "same") == _direct(root, tmp_path / "direct")


@pytest.mark.parametrize("name", ["MR_small_RLE", "MR_small_jp2klossless", "MR_small_jpeg_ls_lossless",
                                  "MR_small_bigendian", "MR_small_implicit"])
def test_compressed_and_legacy_syntaxes_decode_to_identical_voxels(tmp_path, name):
    root = _pydicom_files()
    ref = nib.load(convert_series(root / "MR_small.dcm", tmp_path / "ref")[0])
    other = nib.load(convert_series(root / f"{name}.dcm", tmp_path / "other")[0])
    np.testing.assert_array_equal(np.asarray(other.dataobj), np.asarray(ref.dataobj))
    np.testing.assert_allclose(other.affine, ref.affine)


def test_empty_and_missing_inputs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="empty"):
        convert_tree(tmp_path / "empty", tmp_path / "out")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "notes.txt").write_text("not dicom")
    with pytest.raises(LdmonaiError, match="no DICOM images"):
        convert_tree(tmp_path / "text", tmp_path / "out")
    with pytest.raises(UsageError, match="does not exist"):
        convert_tree(tmp_path / "nope", tmp_path / "out")
    with pytest.raises(UsageError, match="inside the input"):
        convert_tree(tmp_path / "text", tmp_path / "text" / "out")
    assert not (tmp_path / "out").exists(), "a run that converted nothing left an OUT folder"
    cli = subprocess.run([sys.executable, "-m", "ldmonai", "prep", "convert", str(tmp_path / "nope"),
                          str(tmp_path / "out")], capture_output=True, text=True)
    assert cli.returncode == 2 and "does not exist" in cli.stderr and "Traceback" not in cli.stderr
    assert not (tmp_path / "out").exists()
    with pytest.raises(UsageError, match="set by ldmonai"):
        convert_tree(tmp_path / "text", tmp_path / "out", engine_args=["-o", "/tmp"])


def test_dask_local_cluster_converts_the_nih_set_like_dcm2niix(tmp_path, dcm_qa_nih):
    """A real distributed.LocalCluster with 2 worker processes on loopback."""
    pytest.importorskip("distributed")
    ref = _direct(dcm_qa_nih / "In", tmp_path / "direct", "-f", "%p_%s")
    environ = dict(os.environ)
    report = convert_tree(dcm_qa_nih / "In", tmp_path / "out", template="%p_%s", compress=False, workers=2,
                          scheduler="local", progress=False)
    # distributed sets OMP_NUM_THREADS=1 and more for its workers; later subprocesses must not inherit it
    assert dict(os.environ) == environ
    assert report.ok and len(report.converted) == 8, report.summary()
    assert _tree(tmp_path / "out") == ref
    again = convert_tree(dcm_qa_nih / "In", tmp_path / "out", template="%p_%s", compress=False, workers=2,
                         scheduler="local", progress=False)
    assert len(again.skipped) == 8 and not again.converted


def test_adjacent_mode_converts_the_nih_set_like_dcm2niix(tmp_path, dcm_qa_nih):
    """--adjacent (dcm2niix's -a y assumption: one folder per series) skips the header pass and
    still writes dcm2niix's files byte for byte where the assumption holds."""
    ref = _direct(dcm_qa_nih / "In", tmp_path / "direct", "-f", "%p_%s")
    report = convert_tree(dcm_qa_nih / "In", tmp_path / "out", template="%p_%s", compress=False, workers=2,
                          adjacent=True, progress=False)
    assert report.ok and len(report.converted) == 8, report.summary()
    assert _tree(tmp_path / "out") == ref
