"""The [sd] backend: a local Stable Diffusion folder and a CLIP text encoder behind LD's interfaces."""

import json

import pytest
import torch

pytest.importorskip("diffusers", reason="the Stable Diffusion backend needs the [sd] extra (diffusers)")
pytest.importorskip("transformers", reason="the CLIP text encoder needs the [sd] extra (transformers)")

from ldmonai.errors import LdmonaiError  # noqa: E402
from ldmonai.ld.clip_text_encoder import ClipTextEncoder  # noqa: E402
from ldmonai.ld.diffusers_backend import load_stable_diffusion  # noqa: E402
from ldmonai.ld.finetune import SCHEMES, load_custom_diffusion, prepare_scheme, save_custom_diffusion  # noqa: E402
from sd_factory import make_tiny_stable_diffusion  # noqa: E402

PROMPT = "a brain mri of a brain"
SD_GUIDANCE = 10.0  # τ: on this random tiny UNet, one step of 10 lowers the map distance at every timestep


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return make_tiny_stable_diffusion(tmp_path_factory.mktemp("sd") / "tiny-sd")


def test_loads_samples_and_keeps_the_scheduler(sd_folder):
    model = load_stable_diffusion(sd_folder).eval()
    assert abs(float(model.scale_factor) - 0.18215) < 1e-6 and model.latent_channels == 4
    images = model.sample([PROMPT, "a photo of a cat"], (8, 8), delta=0.1, num_inference_steps=3, guidance_scale=2.0,
                          generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 1, 16, 16) and torch.isfinite(images).all()
    again = model.sample([PROMPT, "a photo of a cat"], (8, 8), delta=0.1, num_inference_steps=3, guidance_scale=2.0,
                         generator=torch.Generator().manual_seed(0))
    assert torch.equal(images, again)  # seeded runs reproduce
    # grey [0, 1] slices in, the same geometry out, and the size check of the MONAI backend
    latents = model.encode(torch.rand(2, 1, 16, 16))
    assert latents.shape == (2, 4, 8, 8)
    with pytest.raises(LdmonaiError, match="not a multiple of 2"):
        model.encode(torch.rand(1, 1, 15, 15))
    with pytest.raises(LdmonaiError, match=r"take.*\(B, 1, H, W\)"):
        model.encode(torch.rand(1, 3, 16, 16))


def test_clip_context_and_learned_tokens(sd_folder):
    enc = ClipTextEncoder(sd_folder)
    context = enc([PROMPT])
    assert context.shape == (1, 77, 32)
    ids = enc.add_tokens(["<sks>"], initializer="a")
    assert ids == [enc.num_base] and enc.learned_tokens == ["<sks>"]
    with torch.no_grad():
        enc.learned_embedding.fill_(3.0)
    # the learned row reaches the context only where the token is used
    assert torch.equal(enc([PROMPT]), context)
    assert not torch.equal(enc(["a brain mri of a <sks> brain"]), enc(["a brain mri of a brain brain"]))
    with pytest.raises(LdmonaiError, match="not one"):
        enc.add_tokens(["<new>"], initializer="brainstem")


@pytest.mark.parametrize("scheme", SCHEMES)
def test_schemes_train_only_their_parameters(sd_folder, scheme):
    model = load_stable_diffusion(sd_folder)
    params = prepare_scheme(model, scheme, "<sks>", initializer="a" if scheme == "textual_inversion" else None)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    latents = model.encode(torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0)))
    for _ in range(2):
        loss = model.denoising_loss(latents, ["a brain mri of a <sks> brain"] * 2, delta=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    moved = {n for n, p in model.named_parameters() if n in before and not torch.equal(before[n], p)}
    assert moved, scheme
    if scheme in ("full", "dreambooth"):
        assert all(n.startswith("unet.") for n in moved)
    elif scheme == "textual_inversion":
        assert moved == {"text_encoder.learned_embedding"}
    elif scheme == "custom_diffusion":
        assert all(".attn2.to_k." in n or ".attn2.to_v." in n or n == "text_encoder.learned_embedding" for n in moved)
    else:
        assert all("lora_" in n for n in moved)


def test_custom_diffusion_artifact_round_trip(sd_folder, tmp_path):
    model = load_stable_diffusion(sd_folder)
    prepare_scheme(model, "custom_diffusion", "<sks>")
    with torch.no_grad():
        for n, p in model.unet.named_parameters():
            if ".attn2.to_k." in n:
                p.add_(1.0)
    save_custom_diffusion(model, tmp_path / "cd.pt")
    fresh = load_stable_diffusion(sd_folder)
    load_custom_diffusion(fresh, tmp_path / "cd.pt")
    assert fresh.text_encoder.learned_tokens == ["<sks>"]
    for (n, p), (_, q) in zip(model.unet.named_parameters(), fresh.unet.named_parameters()):
        if ".attn2.to_k." in n:
            assert torch.equal(p, q)


def test_bad_folders_are_one_clear_error(sd_folder, tmp_path):
    with pytest.raises(LdmonaiError, match="not a Stable Diffusion folder: no unet, vae"):
        load_stable_diffusion(tmp_path)
    v = make_tiny_stable_diffusion(tmp_path / "v", prediction_type="v_prediction")
    with pytest.raises(LdmonaiError, match="predicts 'v_prediction'"):
        load_stable_diffusion(v)
    with pytest.raises(LdmonaiError, match="no such folder"):
        ClipTextEncoder(tmp_path / "missing")


@pytest.mark.slow
def test_bundle_fine_tunes_and_samples_a_stable_diffusion_folder(sd_folder, tmp_path):
    from pathlib import Path

    from conftest import monai_bundle
    from ldmonai.data import make_brain_slices

    configs = Path(__file__).resolve().parents[1] / "bundles" / "ld_slice_generator" / "configs"

    def files(*names):
        return repr([str(configs / n) for n in names])

    make_brain_slices(tmp_path / "brain", num_slices=4, size=16)
    monai_bundle("run", "--config_file", files("train.json", "sd.json"), "--bundle_root", tmp_path, "--dataset_dir",
                 tmp_path / "brain", "--sd_path", sd_folder, "--image_size", 16, "--scheme", "lora", "--epochs", 1,
                 "--iterations_per_epoch", 2, "--grid_steps", 2)
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert any("lora_" in k for k in state)
    monai_bundle("run", "--config_file", files("inference.json", "sd.json"), "--bundle_root", tmp_path, "--sd_path",
                 sd_folder, "--image_size", 16, "--ckpt_path", tmp_path / "models" / "model.pt", "--scheme", "lora",
                 "--num_inference_steps", 2, "--num_per_prompt", 1, "--output_dir", tmp_path / "gen", "--delta", 0.05)
    assert len(list((tmp_path / "gen").glob("*.png"))) == 1


def test_attention_processors_record_the_maps_the_unet_uses(sd_folder):
    """The recorder wraps diffusers' attention processors: the UNet's output is unchanged, and each
    recorded map, applied to the module's values and output projection, gives back exactly what the
    cross-attention module returned."""
    from ldmonai.ld.cross_attention import CrossAttentionMaps

    model = load_stable_diffusion(sd_folder).eval()
    unet = model.unet
    recorder = CrossAttentionMaps(unet)
    names = sorted(recorder.blocks)
    assert names and all(n.endswith("attn2") for n in names)
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 700])
    context = model.text_encoder([PROMPT, "a photo of a cat"])
    outputs, inputs = {}, {}

    def keep(name):
        def hook(module, args, kwargs, out):
            inputs[name], outputs[name] = kwargs.get("encoder_hidden_states"), out

        return hook

    hooks = [recorder.blocks[n].register_forward_hook(keep(n), with_kwargs=True) for n in names]
    with torch.no_grad():
        plain = unet(x, timesteps=t, context=context)
        with recorder:
            recorded = unet(x, timesteps=t, context=context)
    for h in hooks:
        h.remove()
    assert torch.equal(plain, recorded)
    assert type(unet.model.attn_processors[f"{names[0]}.processor"]).__name__ != "_RecordingProcessor"  # restored
    assert sorted(recorder.maps) == names
    for n in names:
        attn, probs = recorder.blocks[n], recorder.maps[n]
        assert probs.shape[:2] == (2, attn.heads) and probs.shape[-1] == context.shape[1]
        torch.testing.assert_close(probs.sum(-1), torch.ones_like(probs.sum(-1)))
        value = attn.head_to_batch_dim(attn.to_v(inputs[n])).reshape(2, attn.heads, context.shape[1], -1)
        mixed = (probs @ value).transpose(1, 2).flatten(2)
        torch.testing.assert_close(attn.to_out[0](mixed), outputs[n], atol=1e-5, rtol=1e-4)


def test_guided_pix2pix_zero_on_stable_diffusion(sd_folder):
    """Cross-attention guidance runs on the diffusers UNet. τ = 0 edits exactly as without guidance.
    A guidance step goes down the gradient of the map distance, through the attention processors:
    the distance after one small step is lower than before it, at every timestep."""
    from ldmonai.ld.editing import Pix2PixZero, edit_direction

    model = load_stable_diffusion(sd_folder).eval()
    images = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    prompts = [PROMPT] * 2
    z_t = Pix2PixZero(model, num_inference_steps=6).invert(images, prompts)
    direction = edit_direction(model.text_encoder, ["a brain mri of a healthy brain"], ["a brain mri of a sick brain"])
    free = Pix2PixZero(model, num_inference_steps=6, guidance=0.0)
    unguided = free.edit(z_t, prompts, direction, strength=2.0, track_attention=True)
    assert len(free.attention_error) == 6 and sum(free.attention_error[1:]) > 0
    assert torch.equal(unguided, free.edit(z_t, prompts, direction, strength=2.0))
    guided = Pix2PixZero(model, num_inference_steps=6, guidance=SD_GUIDANCE).edit(z_t, prompts, direction, strength=2.0)
    assert float((guided - unguided).abs().mean()) > 0

    source = model.text_encoder(prompts)
    edited = source + 2.0 * direction
    editor = Pix2PixZero(model, num_inference_steps=6, guidance=SD_GUIDANCE)
    reference = editor.reference_maps(z_t, source)
    step, measure = editor._guide(edited, reference), free._guide(edited, reference)
    for t in sorted(reference, reverse=True)[1:]:
        timestep = torch.full((2,), t)
        before = len(editor.attention_error)
        moved = step(z_t, timestep)
        measure(moved, timestep)
        assert free.attention_error[-1] < editor.attention_error[before], t


@pytest.mark.slow
def test_instruct_pix2pix_and_guided_pix2pix_zero_through_sd_json(sd_folder, tmp_path):
    """InstructPix2Pix trains from the Stable Diffusion folder (widened UNet input) and edits, and
    Pix2Pix-Zero edits with cross-attention guidance, both through the bundle with sd.json."""
    from pathlib import Path

    from conftest import monai_bundle
    from ldmonai.data import make_aging_pairs, make_brain_slices
    from test_ld_bundle import check_edit_metrics

    configs = Path(__file__).resolve().parents[1] / "bundles" / "ld_slice_generator" / "configs"

    def files(*names):
        return repr([str(configs / n) for n in names])

    make_aging_pairs(tmp_path / "pairs", num_pairs=8, size=16, val_fraction=0.25)
    make_brain_slices(tmp_path / "brain", num_slices=8, size=16, val_fraction=0.25)
    sd = ["--sd_path", sd_folder, "--image_size", 16]
    monai_bundle("run", "--config_file", files("train.json", "instruct_pix2pix.json", "sd.json"), "--bundle_root", tmp_path,
                 "--dataset_dir", tmp_path / "pairs", *sd, "--epochs", 1, "--iterations_per_epoch", 2, "--grid_steps", 2)
    ckpt = tmp_path / "models" / "instruct_pix2pix.pt"
    state = torch.load(ckpt, weights_only=True)
    assert state["unet.model.conv_in.weight"].shape[1] == 8  # [z_t, E(source)]
    runs = {"instruct_pix2pix": (["instruct_pix2pix.json"], ["--ckpt_path", ckpt, "--dataset_dir", tmp_path / "pairs"]),
            "pix2pix_zero": ([], ["--dataset_dir", tmp_path / "brain", "--cross_attention_guidance", 10.0])}
    for method, (extra_configs, extra) in runs.items():
        out = tmp_path / f"edit_{method}"
        monai_bundle("run", "--config_file", files("inference.json", *extra_configs, "sd.json", "edit.json"),
                     "--bundle_root", tmp_path, *sd, *extra, "--output_dir", out, "--num_inference_steps", 3,
                     "--edit_limit", 2)
        summary = json.loads((out / "edit_summary.json").read_text())
        assert summary["method"] == method and summary["cases"] == 2
        check_edit_metrics(out, tmp_path / ("pairs" if method == "instruct_pix2pix" else "brain"),
                           "source" if method == "instruct_pix2pix" else "image", summary)
