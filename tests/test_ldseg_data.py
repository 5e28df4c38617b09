"""Datalists, inference case lists and the MNI152 tissue samples."""

import gzip
import json

import nibabel as nib
import numpy as np
import pytest

from ldmonai.data import find_images, inference_cases, load_datalist, make_tissue_dataset
from ldmonai.errors import LdmonaiError


@pytest.fixture(scope="module")
def tissue2d(tmp_path_factory):
    return make_tissue_dataset(tmp_path_factory.mktemp("tissue2d"), 2, num_train=3, num_val=1, num_test=2, size=32)


def test_tissue_samples_are_real_and_reproducible(tissue2d, tmp_path):
    data = json.loads(tissue2d.read_text())
    assert [len(data[k]) for k in ("training", "validation", "test")] == [3, 1, 2]
    label = nib.load(tissue2d.parent / data["training"][0]["label"])
    image = nib.load(tissue2d.parent / data["training"][0]["image"])
    assert label.shape == image.shape == (32, 32)
    np.testing.assert_array_equal(label.affine, image.affine)
    counts = np.bincount(np.asarray(label.dataobj).ravel(), minlength=4)
    assert len(counts) == 4 and (counts > 0).all(), counts  # all four tissue classes appear
    again = make_tissue_dataset(tmp_path, 2, num_train=3, num_val=1, num_test=2, size=32)
    np.testing.assert_array_equal(
        np.asarray(nib.load(again.parent / data["training"][2]["image"]).dataobj),
        np.asarray(nib.load(tissue2d.parent / data["training"][2]["image"]).dataobj),
    )


def test_tissue_volume_geometry(tmp_path):
    dl = make_tissue_dataset(tmp_path, 3, num_train=1, num_val=0, size=(16, 20, 16))
    img = nib.load(tmp_path / json.loads(dl.read_text())["training"][0]["image"])
    assert img.shape == (16, 20, 16)
    # The grid spans the MNI brain (about 140 x 175 x 140 mm), so voxels are about 9 mm.
    assert 7 < abs(img.affine[0, 0]) < 11


def test_datalist_errors_name_file_and_fix(tmp_path, tissue2d):
    assert len(load_datalist(tissue2d, "training")) == 3
    bad = tmp_path / "dl.json"
    bad.write_text(json.dumps({"training": [{"image": "a.nii.gz"}]}))
    with pytest.raises(LdmonaiError, match=r"dl.json: training\[0\] has no key 'label'.*fix: add 'label'"):
        load_datalist(bad, "training")
    with pytest.raises(LdmonaiError, match=r"no 'validation' list \(lists present: \['training'\]\)"):
        load_datalist(bad, "validation")
    bad.write_text(json.dumps({"training": [{"image": "missing.nii.gz", "label": "missing.nii.gz"}]}))
    with pytest.raises(LdmonaiError, match="points to a missing file"):
        load_datalist(bad, "training")
    bad.write_text("{not json")
    with pytest.raises(LdmonaiError, match="not valid JSON"):
        load_datalist(bad)
    bad.write_text(json.dumps({"training": []}))
    with pytest.raises(LdmonaiError, match="is empty"):
        load_datalist(bad)


def test_inference_cases_skip_bad_and_done(tmp_path, tissue2d):
    src = tmp_path / "in"
    src.mkdir()
    data = json.loads(tissue2d.read_text())
    good = [tissue2d.parent / e["image"] for e in data["training"]]
    for p in good:
        (src / p.name).write_bytes(p.read_bytes())
    (src / "corrupt.nii.gz").write_bytes(gzip.compress(b"not a nifti"))
    nan = np.full((32, 32), np.nan, dtype=np.float32)
    nib.save(nib.Nifti1Image(nan, np.eye(4)), src / "nan.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), src / "vol3d.nii.gz")
    (src / "notes.txt").write_text("ignored")
    before = {p.name: p.read_bytes() for p in src.iterdir()}

    out = tmp_path / "out"
    todo = inference_cases(src, out, ["seg"], spatial_dims=2)
    assert [c["image"].rsplit("/", 1)[-1] for c in todo] == sorted(p.name for p in good)
    report = json.loads((out / "skipped_cases.json").read_text())
    reasons = {r["path"].rsplit("/", 1)[-1]: r["reason"] for r in report["skipped"]}
    assert set(reasons) == {"corrupt.nii.gz", "nan.nii.gz", "vol3d.nii.gz"}
    assert "cannot be read" in reasons["corrupt.nii.gz"]
    assert "NaN" in reasons["nan.nii.gz"]
    assert "3D but the model is 2D" in reasons["vol3d.nii.gz"]

    (out / f"{good[0].name[:-7]}_seg.nii.gz").write_bytes(b"done")
    assert len(inference_cases(src, out, ["seg"], spatial_dims=2)) == 2
    assert json.loads((out / "skipped_cases.json").read_text())["already_done"] == 1
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before  # inputs untouched


def test_inference_input_forms(tmp_path, tissue2d):
    assert len(find_images(tissue2d, "test")) == 2
    one = tissue2d.parent / json.loads(tissue2d.read_text())["test"][0]["image"]
    assert find_images(one) == [{"image": str(one)}]
    (tmp_path / "empty").mkdir()
    with pytest.raises(LdmonaiError, match="folder holds no images"):
        find_images(tmp_path / "empty")
    with pytest.raises(LdmonaiError, match="input not found"):
        find_images(tmp_path / "nope")


def test_the_bundles_load_step_names_the_file_and_the_fix(tmp_path):
    """What MONAI Label runs on each request's image: one clear line for a missing id, a truncated
    file, NaN voxels or the wrong dimensionality, never a reader's traceback."""
    import nibabel as nib

    from ldmonai.data import CheckedLoadImaged
    from ldmonai.errors import LdmonaiError

    good = tmp_path / "good.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)), good)
    assert tuple(CheckedLoadImaged("image", spatial_dims=3)({"image": str(good)})["image"].shape) == (8, 8, 8)
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[:60])
    nan = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(np.full((8, 8, 8), np.nan, np.float32), np.eye(4)), nan)
    cases = [(tmp_path / "missing.nii.gz", 3, "image not found"), (truncated, 3, "cannot be read"),
             (nan, 3, "NaN"), (good, 2, "pass --spatial_dims 3")]
    for path, dims, words in cases:
        with pytest.raises(LdmonaiError) as err:
            CheckedLoadImaged("image", spatial_dims=dims)({"image": str(path)})
        assert words in str(err.value) and path.name in str(err.value) and "\n" not in str(err.value), str(err.value)
