"""The LD bundle end to end on CPU (tiny preset): pretrain, fine-tune with LD, generate, δ search, evaluate."""

import json
from pathlib import Path

import numpy as np
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
    # the paper's workflow: δ searched on the pretrained model against the training slices, then fine-tuned with
    monai_bundle("run", "--config_file", configs("train.json"), "--bundle_root", root, "--dataset_dir", root / "brain",
                 "--epochs", 2, "--delta", "search", *SEARCH)
    return root


SEARCH = ["--delta_search#num_samples", 4, "--delta_search#num_grid", 5, "--delta_search#num_refine", 2,
          "--delta_search#num_inference_steps", 5]


def test_delta_search_then_fine_tuning_records_the_delta_found(trained):
    """The δ stored in the checkpoint is the one a search of the *pretrained* weights finds (the search
    is seeded, so repeating it in this process must give the same δ), and it is the argmin of its table."""
    from ldmonai.ld.pipeline import load_model, run_delta_search
    from monai.bundle import ConfigParser

    summary = json.loads((trained / "runs" / "delta_search" / "delta_search.json").read_text())
    rows = [r.split(",") for r in (trained / "runs" / "delta_search" / "delta_search.csv").read_text().splitlines()[1:]]
    assert len(rows) == 5 + 2
    assert summary["best_delta"] == pytest.approx(float(min(rows, key=lambda r: float(r[1]))[0]), abs=1e-5)
    fine = torch.load(trained / "models" / "model.pt", weights_only=True)
    assert float(fine["latent_drift"][0]) == pytest.approx(summary["best_delta"], abs=1e-6)
    assert torch.load(trained / "models" / "pretrained.pt", weights_only=True)["latent_drift"].abs().max() == 0

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    pre = load_model(parser.get_parsed_content("network_def"), trained / "models" / "pretrained.pt")
    again = run_delta_search(pre, trained / "brain" / "datalist.json", trained / "search_again", parser.get_parsed_content("latent_size"), num_samples=4,
                             split="training", num_grid=5, num_refine=2, num_inference_steps=5)
    assert again["best_delta"] == summary["best_delta"]


def test_pretraining_then_fine_tuning_with_latent_drift(trained):
    pre = torch.load(trained / "models" / "pretrained.pt", weights_only=True)
    fine = torch.load(trained / "models" / "model.pt", weights_only=True)
    assert pre.keys() == fine.keys()
    # full fine-tuning moves the UNet only (and records its δ); the autoencoder and the text encoder stay as pretrained
    moved = {k.split(".")[0] for k in pre if not torch.equal(pre[k], fine[k])}
    assert moved - {"latent_drift"} == {"unet"}, moved
    assert float(pre["scale_factor"]) != 1.0  # set from the natural crops' latents between the two stages
    assert list((trained / "runs").glob("events.out.tfevents.*"))


def test_inference_samples_with_the_trained_delta_unless_told(trained):
    trained_delta = float(torch.load(trained / "models" / "model.pt", weights_only=True)["latent_drift"][0])
    for delta in (None, 0.0):
        out = trained / f"gen_{delta}"
        monai_bundle("run", "--config_file", configs("inference.json"), "--bundle_root", trained, "--output_dir", out,
                     *([] if delta is None else ["--delta", delta]), "--num_inference_steps", 5, "--num_per_prompt", 2,
                     "--prompts", "['a brain mri of a brain','a photo of a cat']")
        assert len(list(out.glob("*.png"))) == 4 and len(list(out.glob("*.nii.gz"))) == 4
        recorded = json.loads((out / "prompts.json").read_text())["delta"]
        assert recorded == (pytest.approx(trained_delta, abs=1e-6) if delta is None else 0.0)


def test_delta_search_and_evaluate(trained):
    out = trained / "search"
    monai_bundle("run", "--config_file", configs("inference.json", "delta_search.json"), "--bundle_root", trained,
                 "--dataset_dir", trained / "brain", "--output_dir", out, "--num_inference_steps", 5,
                 "--search_samples", 4, "--num_grid", 3, "--num_refine", 2)
    summary = json.loads((out / "delta_search.json").read_text())
    rows = [r.split(",") for r in (out / "delta_search.csv").read_text().splitlines()[1:]]
    assert len(rows) == 3 + 2
    best = min(rows, key=lambda r: float(r[1]))
    assert summary["best_delta"] == pytest.approx(float(best[0]), abs=1e-5) and best[3] == "1"
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
    assert all(torch.equal(pre[k], ti[k]) for k in pre if k not in ("text_encoder.learned_embedding", "latent_drift"))
    assert torch.allclose(ti["latent_drift"], torch.tensor(0.1))  # train.json's default δ, recorded
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
        assert summary["method"] == method and summary["cases"] == 2
        assert len(list(out.glob("*.png"))) == 2 and len(list(out.glob("*.nii.gz"))) == 2
        check_edit_metrics(out, trained / ("pairs" if method == "instruct_pix2pix" else "brain"),
                           "source" if method == "instruct_pix2pix" else "image", summary)


def check_edit_metrics(out, data, key, summary):
    """The metric table describes the files written: PSNR and SSIM recomputed independently
    (closed-form PSNR; scikit-image's Gaussian SSIM, which uses MONAI's window, sigma and
    constants) from each written counterfactual and its source."""
    import csv

    import nibabel as nib
    from skimage.metrics import structural_similarity

    from ldmonai.ld.pipeline import load_slices

    sources, _ = load_slices(data / "datalist.json", "validation", 2, key=key)
    rows = list(csv.DictReader((out / "edit_metrics.csv").open()))
    assert len(rows) == 2
    for i, row in enumerate(rows):
        edited = np.asarray(nib.load(out / f"{i:03d}.nii.gz").dataobj).T  # written transposed to (x, y)
        source = sources[i, 0].numpy()
        psnr = 10 * np.log10(1.0 / np.mean((edited - source) ** 2))
        ssim = structural_similarity(edited, source, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False)
        assert float(row["psnr"]) == pytest.approx(psnr, abs=1e-3)
        assert float(row["ssim"]) == pytest.approx(ssim, abs=1e-3)
    assert summary["psnr"] == pytest.approx(np.mean([float(r["psnr"]) for r in rows]), abs=1e-6)


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
    assert moved == {"unet", "latent_drift"}, moved
    assert torch.allclose(db["latent_drift"], torch.tensor(0.1))
