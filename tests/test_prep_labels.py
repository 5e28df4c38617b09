"""Segmentation data through ``ldmonai prep``: label maps stay label maps, and a datalist comes out."""

import json

import nibabel as nib
import numpy as np

from ldmonai.cli import main as cli


def test_resample_pairs_labels_keeps_their_ids_and_writes_a_datalist(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    label = np.zeros((20, 16, 12), np.uint8)
    label[4:12, 4:12, 2:8] = 1
    label[10:16, 6:14, 4:10] = 2
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(rng.random(label.shape).astype(np.float32) + label, affine), src / "Case1.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), src / "Case1_label.nii.gz")
    out = tmp_path / "out"
    assert cli(["prep", "resample", str(src), str(out), "--spacing", "2", "--quiet"]) == 0
    capsys.readouterr()
    # one case, not two: the label map is the image's, resampled by nearest neighbour
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["Case1"]
    moved = nib.load(out / "Case1" / "Case1_label.nii.gz")
    image = nib.load(out / "Case1" / "Case1_image.nii.gz")
    assert moved.shape == image.shape == (10, 8, 12)
    np.testing.assert_allclose(moved.affine, image.affine)
    values = np.asarray(moved.dataobj)
    assert set(np.unique(values).tolist()) == {0, 1, 2}  # no interpolated class ids
    # nearest neighbour at 2x: every output voxel is one of the input voxels it covers
    np.testing.assert_array_equal(values, label[::2, ::2, :])
    data = json.loads((out / "datalist.json").read_text())
    assert data == {"training": [{"image": "Case1/Case1_image.nii.gz", "label": "Case1/Case1_label.nii.gz"}]}
