"""The GDM bundle end to end on the project's MR/CT head phantoms (CPU, tiny preset).

- MRI-to-CT: GDM must beat the intensity-mapping baseline (fitted on the training split)
  on masked MAE in HU on the held-out test split.
- Sparse-view CT: the generator's output must beat its own FBP input on PSNR.
- Inference writes synthetic CT in HU on the MR's grid, a preview, and resumes.
"""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from conftest import monai_bundle

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "gdm"
CONFIGS = BUNDLE / "configs"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    from ldmonai.data import make_mr_ct_phantoms

    root = tmp_path_factory.mktemp("gdm")
    make_mr_ct_phantoms(root / "data", num_cases=10, size=48, seed=0)
    return root


def _csv(path: Path) -> dict[str, float]:
    return {k: float(v) for k, v in (line.split(",") for line in path.read_text().splitlines() if line)}


def _load(entry):
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, ScaleIntensityRangePercentilesd

    keys = ["image", "label", "mask"]
    return Compose([LoadImaged(keys, image_only=True), EnsureChannelFirstd(keys),
                    ScaleIntensityRangePercentilesd("image", 0.5, 99.5, 0, 1, clip=True)])(entry)


def test_mri_to_ct_beats_intensity_mapping(phantoms):
    from ldmonai.data import paired_datalist
    from ldmonai.gdm import IntensityMapping
    from ldmonai.metrics import image_metrics

    data = phantoms / "data" / "Task1"
    common = ["--bundle_root", phantoms, "--dataset_dir", data]
    monai_bundle("run", "--config_file", CONFIGS / "train.json", *common, "--epochs", 100, "--val_interval", 50,
                 "--output_dir", phantoms / "runs")
    assert list((phantoms / "runs").glob("events.out.tfevents.*"))
    monai_bundle("run", "--config_file", f"['{CONFIGS / 'train.json'}','{CONFIGS / 'evaluate.json'}']", *common,
                 "--eval_dir", phantoms / "eval")
    gdm = _csv(phantoms / "eval" / "metrics.csv")
    train = [_load(e) for e in paired_datalist(data, "training", 0.2, 0.2)]
    test = [_load(e) for e in paired_datalist(data, "test", 0.2, 0.2)]
    lut = IntensityMapping().fit([(np.asarray(c["image"][0]), np.asarray(c["label"][0]), np.asarray(c["mask"][0])) for c in train])
    base = [image_metrics(np.asarray(c["label"][0]), lut(c["image"][None].as_tensor())[0, 0].numpy(), np.asarray(c["mask"][0]))
            for c in test]
    base_mae = float(np.mean([m["mae"] for m in base]))
    print(f"GDM {gdm}; intensity mapping MAE {base_mae:.1f} HU")
    assert gdm["mae_hu"] < base_mae
    per_case = (phantoms / "eval" / "mae_hu_raw.csv").read_text()
    assert "ct.mha" in per_case



def test_inference_writes_sct_on_the_mr_grid(phantoms):
    from ldmonai.data import paired_datalist

    data = phantoms / "data" / "Task1"
    test = [_load(e) for e in paired_datalist(data, "test", 0.2, 0.2)]
    assert (phantoms / "models" / "model.pt").is_file(), "runs after test_mri_to_ct_beats_intensity_mapping"
    # inference: synthetic CT in HU on each MR's grid, named by patient, with a preview
    out = phantoms / "sct"
    monai_bundle("run", "--config_file", CONFIGS / "inference.json", "--bundle_root", phantoms, "--input", data, "--output_dir", out)
    case = test[0]
    name = Path(case["image"].meta["filename_or_obj"]).parent.name
    sct = nib.load(out / f"{name}_sct.nii.gz")
    mr = sitk.ReadImage(str(Path(case["image"].meta["filename_or_obj"])))
    assert sct.shape == mr.GetSize()
    np.testing.assert_allclose(np.asarray(sct.header.get_zooms()), mr.GetSpacing(), atol=1e-4)
    # NIfTI RAS origin = LPS origin with x, y negated
    np.testing.assert_allclose(sct.affine[:3, 3], np.array(mr.GetOrigin()) * [-1, -1, 1], atol=1e-3)
    values = np.asarray(sct.dataobj)
    assert values.min() >= -1024 and values.max() <= 3071 and values.max() > 300
    assert (out / f"{name}_preview.png").is_file()
    before = sct_mtime = (out / f"{name}_sct.nii.gz").stat().st_mtime_ns
    monai_bundle("run", "--config_file", CONFIGS / "inference.json", "--bundle_root", phantoms, "--input", data, "--output_dir", out)
    assert (out / f"{name}_sct.nii.gz").stat().st_mtime_ns == before == sct_mtime
    # a folder input runs the test split only, as training held it out
    ids = sorted(Path(e["image"].meta["filename_or_obj"]).parent.name for e in test)
    assert sorted(p.name.split("_")[0] for p in out.glob("*_sct.nii.gz")) == ids
    # the official naming, <id>.mha, scored without the network: the same numbers as the NIfTI outputs
    official = phantoms / "official"
    monai_bundle("run", "--config_file", CONFIGS / "inference.json", "--bundle_root", phantoms, "--input", data,
                 "--output_dir", official, "--synthrad_naming", "true")
    assert sorted(p.name for p in official.glob("*.mha")) == [f"{i}.mha" for i in ids]
    from ldmonai.gdm.score import score_folder
    from ldmonai.metrics import image_metrics

    scores = {c["id"]: c for c in score_folder(official, data).cases}
    assert sorted(scores) == ids
    for e in test:
        pid = Path(e["image"].meta["filename_or_obj"]).parent.name
        nii = np.asarray(nib.load(out / f"{pid}_sct.nii.gz").dataobj).transpose(2, 1, 0)  # RAS (x, y, z) -> ITK (z, y, x)
        ct = sitk.GetArrayFromImage(sitk.ReadImage(e["label"].meta["filename_or_obj"]))
        mask = sitk.GetArrayFromImage(sitk.ReadImage(e["mask"].meta["filename_or_obj"]))
        ref = image_metrics(ct, nii, mask, names=("mae", "psnr"))
        assert scores[pid]["mae"] == pytest.approx(ref["mae"], rel=1e-6)
        assert scores[pid]["psnr"] == pytest.approx(ref["psnr"], rel=1e-6)


def test_sparse_view_ct_beats_fbp(phantoms):
    from ldmonai.data import paired_datalist
    from ldmonai.gdm import SparseViewd, unit_to_hu
    from ldmonai.metrics import image_metrics

    data = phantoms / "data" / "Task1"
    configs = f"['{CONFIGS / 'train.json'}','{CONFIGS / 'svct.json'}']"
    common = ["--bundle_root", phantoms, "--dataset_dir", data, "--ckpt_dir", phantoms / "svct_models"]
    monai_bundle("run", "--config_file", configs, *common, "--epochs", 20, "--val_interval", 20, "--output_dir", phantoms / "svct_runs")
    evaluate = f"['{CONFIGS / 'train.json'}','{CONFIGS / 'svct.json'}','{CONFIGS / 'evaluate.json'}']"
    monai_bundle("run", "--config_file", evaluate, *common, "--eval_dir", phantoms / "svct_eval",
                 "--ckpt_path", phantoms / "svct_models" / "model.pt")
    gdm = _csv(phantoms / "svct_eval" / "metrics.csv")
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, ScaleIntensityRanged

    sim = Compose([LoadImaged(["label", "mask"], image_only=True), EnsureChannelFirstd(["label", "mask"]),
                   ScaleIntensityRanged("label", -1024, 3071, -1, 1, clip=True), SparseViewd(num_views=36)])
    fbp = []
    for e in paired_datalist(data, "test", 0.2, 0.2):
        c = sim(e)
        fbp.append(image_metrics(np.asarray(unit_to_hu(c["label"][0])), np.asarray(unit_to_hu(c["image"][0])), np.asarray(c["mask"][0])))
    fbp_psnr = float(np.mean([m["psnr"] for m in fbp]))
    print(f"SVCT GDM {gdm}; FBP PSNR {fbp_psnr:.2f} dB")
    assert gdm["psnr"] > fbp_psnr

    # Inference from CT volumes (the SynthRAD folder's test split): FBP and GDM written in HU on
    # each CT's grid. The FBP file is the simulation above, rounded; the GDM file scores as the
    # evaluate step did (same PSNR to rounding), so what is written is what was measured.
    out = phantoms / "svct_inference"
    monai_bundle("run", "--config_file", f"['{CONFIGS / 'inference.json'}','{CONFIGS / 'svct_inference.json'}']",
                 "--bundle_root", phantoms, "--input", data, "--output_dir", out,
                 "--ckpt_path", phantoms / "svct_models" / "model.pt")
    written = []
    for e in paired_datalist(data, "test", 0.2, 0.2):
        case = Path(e["label"]).parent.name
        ct_img = sitk.ReadImage(e["label"])
        ct = sitk.GetArrayFromImage(ct_img).astype(float)
        mask = sitk.GetArrayFromImage(sitk.ReadImage(e["mask"]))
        files = {k: sitk.ReadImage(str(out / f"{case}_{k}.nii.gz")) for k in ("fbp", "svct")}
        for img in files.values():
            assert img.GetSize() == ct_img.GetSize() and np.allclose(img.GetOrigin(), ct_img.GetOrigin(), atol=1e-3)
            assert np.allclose(img.GetDirection(), ct_img.GetDirection(), atol=1e-6)
        c = sim(e)
        expected_fbp = np.rint(np.asarray(unit_to_hu(c["image"][0]).clamp(-1024, 3071))).transpose(2, 1, 0)
        assert np.abs(sitk.GetArrayFromImage(files["fbp"]) - expected_fbp).max() <= 1
        written.append(image_metrics(ct, sitk.GetArrayFromImage(files["svct"]).astype(float), mask, names=("psnr",))["psnr"])
        assert (out / f"{case}_preview.png").is_file()
    assert float(np.mean(written)) == pytest.approx(gdm["psnr"], abs=0.05)

    # Sinograms in the projector's geometry (input_kind sinogram): the same FBP, so the same output
    # voxel for voxel as from the CT they were simulated from.
    sims = phantoms / "sinograms"
    sims.mkdir()
    sino_sim = Compose([LoadImaged(["label"], image_only=True), EnsureChannelFirstd(["label"]),
                        ScaleIntensityRanged("label", -1024, 3071, -1, 1, clip=True),
                        SparseViewd(num_views=36, sinogram_key="sinogram")])
    cases = []
    for e in paired_datalist(data, "test", 0.2, 0.2):
        case = Path(e["label"]).parent.name
        cases.append(case)
        nib.save(nib.Nifti1Image(np.asarray(sino_sim({"label": e["label"]})["sinogram"][0]), np.eye(4)), str(sims / f"{case}.nii.gz"))
    from_sino = phantoms / "svct_from_sinograms"
    monai_bundle("run", "--config_file", f"['{CONFIGS / 'inference.json'}','{CONFIGS / 'svct_inference.json'}']",
                 "--bundle_root", phantoms, "--input", sims, "--output_dir", from_sino, "--input_kind", "sinogram",
                 "--image_size", "[48, 48]", "--ckpt_path", phantoms / "svct_models" / "model.pt")
    for case in cases:
        for kind in ("fbp", "svct"):
            a = np.asarray(nib.load(from_sino / f"{case}_{kind}.nii.gz").dataobj)
            b = np.asarray(nib.load(out / f"{case}_{kind}.nii.gz").dataobj)
            assert np.abs(a.astype(int) - b.astype(int)).max() <= 1, (case, kind)
    bad = phantoms / "bad_sinogram"
    bad.mkdir()
    nib.save(nib.Nifti1Image(np.zeros((30, 70, 8), np.float32), np.eye(4)), str(bad / "x.nii.gz"))
    res = monai_bundle("run", "--config_file", f"['{CONFIGS / 'inference.json'}','{CONFIGS / 'svct_inference.json'}']",
                       "--bundle_root", phantoms, "--input", bad, "--output_dir", phantoms / "bad_out", "--input_kind",
                       "sinogram", "--image_size", "[48, 48]", "--ckpt_path", phantoms / "svct_models" / "model.pt", check=False)
    assert res.returncode != 0 and "expected (36 views" in res.stderr and "Traceback" not in res.stderr[-2000:]
