"""The LDSeg bundle end to end through ``python -m monai.bundle run``: real learning on CPU.

Thresholds were measured on the 2-core CI machine (2D: val Dice 0.75 after 100 epochs;
3D: 0.42 after 40 epochs) and are asserted with margin, and against a chance level
computed from the same validation labels.
"""

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import monai_bundle
from ldmonai.data import make_tissue_dataset

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bundles" / "ldseg" / "configs"
pytestmark = pytest.mark.slow


def bundle(configs, *args, check=True):
    files = [str(CONFIGS / c) for c in configs]
    return monai_bundle("run", "--config_file", repr(files) if len(files) > 1 else files[0], *args, check=check)


def chance_dice(datalist: Path, split: str = "validation", seed: int = 0) -> float:
    """Mean foreground Dice of a prediction that shuffles the true label voxels."""
    rng = np.random.default_rng(seed)
    scores = []
    for entry in json.loads(datalist.read_text())[split]:
        y = np.asarray(nib.load(datalist.parent / entry["label"]).dataobj).ravel()
        p = rng.permutation(y)
        scores += [2 * ((p == c) & (y == c)).sum() / max(1, (p == c).sum() + (y == c).sum()) for c in (1, 2, 3)]
    return float(np.mean(scores))


def metrics(eval_dir: Path) -> dict:
    with open(eval_dir / "metrics.csv") as fh:
        return {row[0]: float(row[1]) for row in csv.reader(fh)}


@pytest.fixture(scope="module")
def trained_2d(tmp_path_factory):
    root = tmp_path_factory.mktemp("ldseg2d")
    datalist = make_tissue_dataset(root / "data", 2, num_train=24, num_val=6, num_test=2, size=64, seed=0)
    proc = bundle(["train.json"], "--bundle_root", root, "--dataset_dir", root / "data", "--epochs", 100, "--val_interval", 50)
    return root, datalist, proc


def test_2d_learns_well_above_chance(trained_2d):
    root, datalist, _ = trained_2d
    proc = bundle(["train.json", "evaluate.json"], "--bundle_root", root, "--dataset_dir", root / "data")
    # the datalist has a test split, so evaluation scores it, and says so
    assert "evaluating the 'test' split" in proc.stdout + proc.stderr
    dice = metrics(root / "eval")["dice"]
    chance = chance_dice(datalist, "test")
    print(f"2D LDSeg test Dice {dice:.3f}, chance {chance:.3f}")
    assert dice > 0.6, dice
    assert dice > 2.5 * chance, (dice, chance)
    # Per-case, per-class tables for Dice, HD95 and surface distance.
    for name in ("dice_raw.csv", "hd95_mm_raw.csv", "surface_distance_mm_raw.csv"):
        rows = list(csv.reader(open(root / "eval" / name)))
        assert rows[0][:4] == ["filename", "class0", "class1", "class2"] and len(rows) == 3  # header + 2 test cases


def test_2d_tensorboard_has_every_term_and_grids(trained_2d):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars, images = set(), set()
    for event_file in (trained_2d[0] / "runs").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(event_file), size_guidance={"images": 0})
        acc.Reload()
        scalars |= set(acc.Tags()["scalars"])
        images |= set(acc.Tags()["images"])
    assert {"train_loss", "train_ce", "train_dice", "train_noise", "val_mean_dice"} <= scalars, scalars
    assert {"val/case_0"} <= images, images


def test_input_noise_lowers_dice(trained_2d):
    root = trained_2d[0]
    out = root / "eval_noisy"
    bundle(["train.json", "evaluate.json"], "--bundle_root", root, "--dataset_dir", root / "data",
           "--input-noise-sigma", 0.5, "--eval_dir", out)
    assert metrics(out)["dice"] < metrics(root / "eval")["dice"] - 0.05


def test_training_resumes_from_last_checkpoint(trained_2d):
    root = trained_2d[0]
    proc = bundle(["train.json"], "--bundle_root", root, "--dataset_dir", root / "data", "--epochs", 101, "--val_interval", 50)
    log = proc.stdout + proc.stderr
    assert "resumed from" in log and "checkpoint_epoch=100.pt" in log, log[-2000:]
    assert "Epoch[101]" in log and "Epoch[1]" not in log.replace("Epoch[101]", "")
    assert (root / "models" / "checkpoint_epoch=101.pt").exists()


def test_inference_keeps_affine_writes_previews_and_resumes(trained_2d, tmp_path):
    root, datalist, _ = trained_2d
    src = tmp_path / "in"
    src.mkdir()
    tests = [datalist.parent / e["image"] for e in json.loads(datalist.read_text())["test"]]
    for p in tests:
        (src / p.name).write_bytes(p.read_bytes())
    (src / "broken.nii.gz").write_bytes(b"\x1f\x8b broken")
    out = tmp_path / "out"
    bundle(["inference.json"], "--bundle_root", root, "--input", src, "--output_dir", out)
    for p in tests:
        stem = p.name[: -len(".nii.gz")]
        image = nib.load(p)
        seg = nib.load(out / f"{stem}_seg.nii.gz")
        assert seg.shape == image.shape
        np.testing.assert_allclose(seg.affine, image.affine, atol=1e-5)
        values = np.unique(np.asarray(seg.dataobj))
        assert set(values) <= {0, 1, 2, 3} and len(values) >= 3
        entropy = np.asarray(nib.load(out / f"{stem}_entropy.nii.gz").dataobj)
        assert entropy.min() >= 0 and entropy.max() <= np.log(4) + 1e-4 and entropy.max() > 0
        assert (out / f"{stem}_preview.png").stat().st_size > 1000
    report = json.loads((out / "skipped_cases.json").read_text())
    assert [r["path"].endswith("broken.nii.gz") for r in report["skipped"]] == [True]
    again = bundle(["inference.json"], "--bundle_root", root, "--input", src, "--output_dir", out)
    assert json.loads((out / "skipped_cases.json").read_text())["already_done"] == len(tests), again.stdout[-500:]


def test_bad_datalist_is_one_clear_line(trained_2d, tmp_path):
    root = trained_2d[0]
    data = tmp_path / "data"
    data.mkdir()
    (data / "datalist.json").write_text(json.dumps({"training": [{"image": str(root / "data" / "imagesTr" / "case_000.nii.gz")}]}))
    proc = bundle(["train.json"], "--bundle_root", tmp_path, "--dataset_dir", data, "--epochs", 1, check=False)
    assert proc.returncode != 0
    assert "ldmonai: error:" in proc.stderr and "training[0] has no key 'label'" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    proc = bundle(["inference.json"], "--bundle_root", tmp_path, "--input", data, check=False)
    assert "ldmonai: error:" in proc.stderr and "folder holds no images" in proc.stderr, proc.stderr[-2000:]
    proc = bundle(["inference.json"], "--bundle_root", tmp_path, "--input", root / "data" / "imagesTr",
                  "--output_dir", tmp_path / "out", "--ckpt_path", tmp_path / "trained.pt", check=False)
    assert "ldmonai: error:" in proc.stderr and "no trained weights" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_3d_learns_above_chance(tmp_path):
    datalist = make_tissue_dataset(tmp_path / "data", 3, num_train=16, num_val=4, size=32, seed=1)
    bundle(["train.json"], "--bundle_root", tmp_path, "--dataset_dir", tmp_path / "data", "--spatial_dims", 3,
           "--batch_size", 4, "--epochs", 40, "--val_interval", 40)
    bundle(["train.json", "evaluate.json"], "--bundle_root", tmp_path, "--dataset_dir", tmp_path / "data",
           "--spatial_dims", 3)
    dice = metrics(tmp_path / "eval")["dice"]
    chance = chance_dice(datalist)
    print(f"3D LDSeg val Dice {dice:.3f}, chance {chance:.3f}")
    assert dice > 0.3, dice
    assert dice > 2 * chance, (dice, chance)
