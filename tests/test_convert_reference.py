"""Our conversion of dcm_qa_nih against the NIfTI + JSON that dcm2niix wrote when the suite was made (Ref/).

The references predate the pinned dcm2niix, so files are not byte-equal (sidecar fields were renamed
since); voxels, affines and the acquisition fields below must be. Byte equality with the pinned
binary's own whole-tree call is tested in test_convert_cases.py and benchmarks/convert_qa.py."""

import json

import nibabel as nib
import numpy as np
import pytest

from conftest import SHARED
from ldmonai.prep import convert_tree

SIDECAR_KEYS = ["RepetitionTime", "EchoTime", "FlipAngle", "SliceTiming", "PhaseEncodingDirection",
                "Manufacturer", "SeriesDescription", "ImageType"]
REFS = sorted(p.stem for p in (SHARED / "dcm_qa_nih" / "Ref").glob("*.json")) or ["<dcm_qa_nih missing>"]


@pytest.fixture(scope="module")
def converted(dcm_qa_nih, tmp_path_factory):
    out = tmp_path_factory.mktemp("dcm_qa_nih")
    report = convert_tree(dcm_qa_nih / "In", out, workers=2, compress=True, progress=False)
    assert report.ok, report.summary()
    by_key = {}
    for item in report.converted:
        nifti = next(p for p in item["outputs"] if p.endswith(".nii.gz"))
        side = json.loads(open(nifti[: -len(".nii.gz")] + ".json").read())
        by_key[(side["ProtocolName"], side["SeriesNumber"])] = (nifti, side)
    return by_key


def test_every_reference_has_a_conversion(dcm_qa_nih, converted):
    refs = list((dcm_qa_nih / "Ref").glob("*.json"))
    assert len(refs) == 8 and len(converted) == 8


@pytest.mark.parametrize("ref_name", REFS)
def test_matches_dcm2niix(ref_name, dcm_qa_nih, converted):
    ref_json = dcm_qa_nih / "Ref" / f"{ref_name}.json"
    ref = json.loads(ref_json.read_text())
    nifti, ours = converted[(ref["ProtocolName"], ref["SeriesNumber"])]

    ref_img = nib.as_closest_canonical(nib.load(ref_json.with_suffix(".nii")))
    our_img = nib.as_closest_canonical(nib.load(nifti))
    assert our_img.shape == ref_img.shape
    assert np.array_equal(np.asarray(our_img.dataobj), np.asarray(ref_img.dataobj)), "voxel data differ"
    assert np.abs(our_img.affine - ref_img.affine).max() < 1e-3, "affine differs by more than 1e-3 mm"
    # Same voxel layout as dcm2niix, not only the same geometry: axis-bound sidecar fields
    # (PhaseEncodingDirection, SliceTiming order) are only comparable then.
    assert np.abs(nib.load(nifti).affine - nib.load(ref_json.with_suffix(".nii")).affine).max() < 1e-3

    for key in SIDECAR_KEYS:
        if key not in ref:
            continue
        assert key in ours, f"sidecar lacks {key}"
        if isinstance(ref[key], list) and ref[key] and isinstance(ref[key][0], (int, float)):
            np.testing.assert_allclose(ours[key], ref[key], atol=1e-4, err_msg=key)
        elif isinstance(ref[key], (int, float)):
            assert ours[key] == pytest.approx(ref[key], abs=1e-4), key
        else:
            assert ours[key] == ref[key], key
