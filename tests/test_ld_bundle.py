"""The LD bundle end to end on CPU (tiny preset): pretrain, fine-tune with LD, generate, δ search, evaluate."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import monai_bundle

CONFIGS = Path(__file__).resolve().parents[1] / "bundles" / "ld_slice_generator" / "configs"
pytestmark = pytest.mark.slow


def configs(*names):
    return repr([str(CONFIGS / n) for n in names])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from ldmonai.data import make_brain_slices, make_natural_slices

    root = tmp_path_factory.mktemp("ld")
    make_natural_slices(root / "natural", num_images=64, size=32)
    make_brain_slices(root / "brain", num_slices=32, size=32)
    monai_bundle("run", "--config_file", configs("train.json", "pretrain.json"), "--bundle_root", root,
                 "--dataset_dir", root / "natural", "--ae_epochs", 3, "--epochs", 4)
    monai_bundle("run", "--config_file", configs("train.json"), "--bundle_root", root, "--dataset_dir", root / "brain",
                 "--epochs", 2, "--delta", 0.1)
    return root


def test_pretraining_then_fine_tuning_with_latent_drift(trained):
    pre = torch.load(trained / "models" / "pretrained.pt", weights_only=True)
    fine = torch.load(trained / "models" / "model.pt", weights_only=True)
    assert pre.keys() == fine.keys()
    # full fine-tuning moves the UNet only; the autoencoder and the text encoder stay as pretrained
    moved = {k.split(".")[0] for k in pre if not torch.equal(pre[k], fine[k])}
    assert moved == {"unet"}, moved
    assert float(pre["scale_factor"]) != 1.0  # set from the natural crops' latents between the two stages
    assert list((trained / "runs").glob("events.out.tfevents.*"))


def test_inference_writes_slices_and_delta_changes_them(trained):
    outs = {}
    for delta in (0.0, 0.1):
        out = trained / f"gen_{delta}"
        monai_bundle("run", "--config_file", configs("inference.json"), "--bundle_root", trained, "--output_dir", out,
                     "--delta", delta, "--num_inference_steps", 5, "--num_per_prompt", 2,
                     "--prompts", "['a brain mri of a brain','a photo of a cat']")
        assert len(list(out.glob("*.png"))) == 4 and len(list(out.glob("*.nii.gz"))) == 4
        assert json.loads((out / "prompts.json").read_text())["delta"] == delta
        outs[delta] = Image.open(out / "000_00.png").tobytes()
    assert outs[0.0] != outs[0.1]


def test_delta_search_and_evaluate(trained):
    out = trained / "search"
    monai_bundle("run", "--config_file", configs("inference.json", "delta_search.json"), "--bundle_root", trained,
                 "--dataset_dir", trained / "brain", "--output_dir", out, "--num_inference_steps", 5,
                 "--search_samples", 4, "--num_grid", 3, "--num_refine", 2)
    summary = json.loads((out / "delta_search.json").read_text())
    assert -0.2 <= summary["best_delta"] <= 0.2
    rows = (out / "delta_search.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 + 2
    assert Image.open(out / "delta_search.png").size[0] > 300 and (out / "delta_grid.png").is_file()
    ev = trained / "eval"
    monai_bundle("run", "--config_file", configs("inference.json", "evaluate.json"), "--bundle_root", trained,
                 "--dataset_dir", trained / "brain", "--output_dir", ev, "--num_inference_steps", 5, "--eval_samples", 8)
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["fid"] > 0 and "kid" in metrics and "offline fallback" in metrics["features"]


def test_textual_inversion_through_the_bundle(trained):
    ckpt = trained / "models_ti"
    monai_bundle("run", "--config_file", configs("train.json"), "--bundle_root", trained, "--dataset_dir", trained / "brain",
                 "--ckpt_dir", ckpt, "--pretrained_path", trained / "models" / "pretrained.pt", "--scheme", "textual_inversion",
                 "--initializer", "brain", "--epochs", 1)
    pre = torch.load(trained / "models" / "pretrained.pt", weights_only=True)
    ti = torch.load(ckpt / "model.pt", weights_only=True)
    assert pre["text_encoder.learned_embedding"].shape[0] == 0 and ti["text_encoder.learned_embedding"].shape[0] == 1
    assert all(torch.equal(pre[k], ti[k]) for k in pre if k != "text_encoder.learned_embedding")
    out = trained / "gen_ti"
    monai_bundle("run", "--config_file", configs("inference.json"), "--bundle_root", trained, "--ckpt_path", ckpt / "model.pt",
                 "--scheme", "textual_inversion", "--output_dir", out, "--num_inference_steps", 3, "--num_per_prompt", 1,
                 "--prompts", "['a brain mri of a <sks> brain']")
    assert len(list(out.glob("*.png"))) == 1


def test_bad_datalist_is_one_clear_line(trained, tmp_path):
    bad = tmp_path / "data"
    bad.mkdir()
    (bad / "datalist.json").write_text(json.dumps({"training": [{"image": str(next((trained / "brain" / "images").glob("*.png")))}]}))
    proc = monai_bundle("run", "--config_file", configs("train.json"), "--bundle_root", trained, "--dataset_dir", bad,
                        "--ckpt_dir", tmp_path / "m", "--epochs", 1, check=False)
    assert proc.returncode != 0
    assert "training[0] has no text 'prompt'" in proc.stderr and "Traceback" not in proc.stderr


def test_tensorboard_has_sample_grids(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    images = set()
    for event_file in (trained / "runs").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(event_file), size_guidance={"images": 0})
        acc.Reload()
        images |= set(acc.Tags()["images"])
    assert "samples" in images, images


def test_image_to_image_counterfactuals(trained):
    """InstructPix2Pix trains from the pretrained weights on ageing pairs and edits; Pix2Pix-Zero
    edits real slices with no pairs; both write previews, NIfTI and SSIM/PSNR tables."""
    from ldmonai.data import make_aging_pairs

    make_aging_pairs(trained / "pairs", num_pairs=24, size=32)
    ckpt = trained / "models_ip2p"
    monai_bundle("run", "--config_file", configs("train.json", "instruct_pix2pix.json"), "--bundle_root", trained,
                 "--dataset_dir", trained / "pairs", "--ckpt_dir", ckpt, "--pretrained_path",
                 trained / "models" / "pretrained.pt", "--epochs", 1, "--iterations_per_epoch", 4)
    state = torch.load(ckpt / "instruct_pix2pix.pt", weights_only=True)
    assert state["unet.conv_in.conv.weight"].shape[1] == 8
    for method, files in (("instruct_pix2pix", ("inference.json", "instruct_pix2pix.json", "edit.json")),
                          ("pix2pix_zero", ("inference.json", "edit.json"))):
        out = trained / f"edit_{method}"
        extra = ["--ckpt_dir", ckpt, "--dataset_dir", trained / "pairs"] if method == "instruct_pix2pix" else \
            ["--dataset_dir", trained / "brain"]
        monai_bundle("run", "--config_file", configs(*files), "--bundle_root", trained, *extra, "--output_dir", out,
                     "--num_inference_steps", 4, "--edit_limit", 2, "--delta", 0.05)
        summary = json.loads((out / "edit_summary.json").read_text())
        assert summary["method"] == method and summary["cases"] == 2 and -1 <= summary["ssim"] <= 1
        assert len(list(out.glob("*.png"))) == 2 and len(list(out.glob("*.nii.gz"))) == 2
        assert len((out / "edit_metrics.csv").read_text().splitlines()) == 3


def test_dreambooth_with_class_prior_preservation(trained):
    ckpt = trained / "models_db"
    monai_bundle("run", "--config_file", configs("train.json", "dreambooth.json"), "--bundle_root", trained,
                 "--dataset_dir", trained / "brain", "--ckpt_dir", ckpt, "--pretrained_path",
                 trained / "models" / "pretrained.pt", "--epochs", 1, "--iterations_per_epoch", 2,
                 "--num_class_images", 4, "--class_steps", 3)
    assert len(list((ckpt / "class_images").glob("class_*.png"))) == 4
    pre = torch.load(trained / "models" / "pretrained.pt", weights_only=True)
    db = torch.load(ckpt / "model.pt", weights_only=True)
    assert db["text_encoder.learned_embedding"].shape[0] == 1  # the identifier token
    moved = {k.split(".")[0] for k in pre if k in db and pre[k].shape == db[k].shape and not torch.equal(pre[k], db[k])}
    assert moved == {"unet"}, moved
