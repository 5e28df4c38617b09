"""One path convention for every datalist the project writes: relative to the datalist's folder.

The demo broke on a relative --out-dir because two writers stored paths relative to the working
directory while every reader resolves them against the datalist's folder
(``demo_out/gdm/data/demo_out/gdm/data/...``). These tests write from one working directory and
read from another, as a user who cds elsewhere would.
"""

import json
import os
from pathlib import Path

import pytest

from ldmonai.data import load_datalist, make_brain_slices, make_mr_ct_phantoms, synthrad_datalist, write_datalist
from ldmonai.data.synthrad import paired_datalist


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """Work in tmp_path/work; return a function that moves to tmp_path/other."""
    (tmp_path / "work").mkdir()
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    return lambda: os.chdir(tmp_path / "other")


def test_write_datalist_rewrites_absolute_and_cwd_relative_paths(tmp_path, elsewhere):
    Path("data/images").mkdir(parents=True)
    for name in ("a.png", "b.png"):
        Path("data/images", name).write_bytes(b"x")
    path = write_datalist("data/datalist.json", {
        "name": "kept", "labels": {"0": "background"},
        "training": [{"image": "data/images/a.png", "prompt": "kept as it is"}],          # cwd-relative
        "validation": [{"image": str(Path("data/images/b.png").resolve()), "age": 70}],  # absolute
    })
    raw = json.loads(path.read_text())
    assert raw["training"][0] == {"image": "images/a.png", "prompt": "kept as it is"}
    assert raw["validation"][0] == {"image": "images/b.png", "age": 70}
    assert raw["name"] == "kept" and raw["labels"] == {"0": "background"}
    datalist = path.resolve()
    elsewhere()
    assert load_datalist(datalist, "training", keys=("image",))[0]["image"] == str(datalist.parent / "images/a.png")


def test_slice_sets_read_back_from_another_working_directory(tmp_path, elsewhere):
    path = make_brain_slices("rel/brain", num_slices=4, size=16, seed=0)
    entries = json.loads(path.read_text())["training"]
    assert all(not Path(e["image"]).is_absolute() and e["image"].startswith("images/") for e in entries)
    datalist = path.resolve()
    elsewhere()
    for entry in load_datalist(datalist, "training", keys=("image",)):
        assert Path(entry["image"]).is_file()


@pytest.mark.slow
def test_synthrad_datalist_from_a_relative_root_reads_back_anywhere(tmp_path, elsewhere):
    """The doubled path of the newcomer's report: the SynthRAD datalist written under a relative
    output folder, then read by a bundle run whose working directory is elsewhere."""
    make_mr_ct_phantoms("out/gdm/data", num_cases=3, size=16, seed=0)
    path = write_datalist("out/gdm/data/datalist.json", synthrad_datalist("out/gdm/data", val_fraction=0.34))
    assert json.loads(path.read_text())["training"][0]["image"] == "Task1/HN/HPH000/mr.mha"
    datalist = path.resolve()
    elsewhere()
    cases = paired_datalist(datalist, "validation")
    assert [Path(c["image"]) for c in cases] == [datalist.parent / "Task1/HN/HPH002/mr.mha"]
    assert all(Path(c[k]).is_file() for c in cases for k in ("image", "label", "mask"))


def test_generated_slices_carry_the_template_geometry(tmp_path):
    """LD's NIfTI slices are written with the MNI152 template's in-plane geometry: each voxel of a
    template slice saved through the generator's writer maps, through its affine, back onto the very
    template voxel it came from (the display flip and the NIfTI transpose undone exactly)."""
    import nibabel as nib
    import numpy as np

    from ldmonai.data.mni_tissue import template_grid
    from ldmonai.data.slice_sets import template_slice_affine
    from ldmonai.ld.pipeline import _save_slice_nifti, datalist_slice_affine

    size = 24
    volume, _, grid = template_grid((size,) * 3)
    volume = volume[0].numpy()
    shown = np.rot90(volume[:, :, size // 2])  # as make_brain_slices shows a slice: anterior up
    _save_slice_nifti(tmp_path / "slice.nii.gz", shown, template_slice_affine(size))
    img = nib.load(tmp_path / "slice.nii.gz")
    data = np.asarray(img.dataobj).reshape(size, size)  # a 2D NIfTI: (x, y)
    ijk = np.stack(np.meshgrid(np.arange(size), np.arange(size), [0], indexing="ij"), -1).reshape(-1, 3)
    world = nib.affines.apply_affine(img.affine, ijk)
    back = np.rint(nib.affines.apply_affine(np.linalg.inv(grid), world)).astype(int)
    assert (back[:, 2] == size // 2).all()
    np.testing.assert_array_equal(data[ijk[:, 0], ijk[:, 1]], volume[back[:, 0], back[:, 1], back[:, 2]])
    assert nib.aff2axcodes(img.affine) == ("R", "P", "S")  # rows of the shown slice run anterior to posterior
    # the datalist of `ldmonai data brain-slices` carries that affine for the bundle's inference
    path = make_brain_slices(tmp_path / "brain", num_slices=2, size=size)
    np.testing.assert_allclose(datalist_slice_affine(path), template_slice_affine(size), atol=1e-5)


def test_a_synthrad_folder_is_split_for_inference_as_for_training(tmp_path, caplog):
    """inference.json's input_split on a folder: the test cases are those training held out, and a
    region too small for a test case gets one (or a warning where it cannot)."""
    from ldmonai.data import find_images

    for region, n in (("HN", 10), ("TH", 2), ("AB", 1)):
        for i in range(n):
            case = tmp_path / "Task1" / region / f"1{region}{i:03d}"
            case.mkdir(parents=True)
            for name in ("mr.mha", "ct.mha"):
                (case / name).write_bytes(b"")
    with caplog.at_level("WARNING"):
        split = synthrad_datalist(tmp_path / "Task1", val_fraction=0.2, test_fraction=0.2)
    test = sorted(e["case"] for e in split["test"])
    assert test == ["1HN008", "1HN009", "1TH001"]  # TH (2 patients) still gets one test case
    assert "region AB has 1 patient(s): no validation or test case" in caplog.text
    found = find_images(tmp_path / "Task1", "test", fractions=(0.2, 0.2))
    assert sorted(Path(e["image"]).parent.name for e in found) == test
    assert len(find_images(tmp_path / "Task1", "all", fractions=(0.2, 0.2))) == 13
    assert len(find_images(tmp_path / "Task1", "test")) == 13  # no fractions: every case, as before
