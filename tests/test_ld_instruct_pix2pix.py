"""InstructPix2Pix-style editing: the widened start, condition dropout, guidance, and real learning."""

import numpy as np
import pytest
import torch
from monai.networks.nets import DiffusionModelUNet

from ldmonai.data.slice_sets import simulate_atrophy
from ldmonai.errors import LdmonaiError
from ldmonai.ld.instruct_pix2pix import InstructPix2Pix, from_text_to_image
from ldmonai.ld.prompts import PromptBuilder
from test_ld_model import tiny_model

INSTRUCTION = "make this brain seven years older"
MARGIN_DB = 1.0  # measured: 16.4 dB against its own target, 14.7 dB against another pair's


def tiny_ip2p(seed: int = 0, **kwargs) -> InstructPix2Pix:
    torch.manual_seed(seed)
    t2i = tiny_model(seed)
    unet = DiffusionModelUNet(2, 8, 4, channels=(16, 32), attention_levels=(False, True), num_res_blocks=1,
                              num_head_channels=8, with_conditioning=True, cross_attention_dim=32, norm_num_groups=8)
    return InstructPix2Pix(t2i.autoencoder, unet, t2i.text_encoder, **kwargs)


def test_widened_model_starts_as_the_text_to_image_model(tmp_path):
    t2i = tiny_model(1)
    t2i.record_delta(0.05)
    torch.save(t2i.state_dict(), tmp_path / "t2i.pt")
    from ldmonai.ld.pipeline import instruct_pix2pix_model, load_model

    model = instruct_pix2pix_model(tiny_model(2), tmp_path / "t2i.pt", condition_dropout=0.1).eval()
    assert isinstance(model, InstructPix2Pix) and model.condition_dropout == 0.1 and model.trained_delta() == 0.05
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"unet"}
    g = torch.Generator().manual_seed(0)
    noisy, source = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([10, 500])
    context = t2i.text_encoder([INSTRUCTION] * 2)
    with torch.no_grad():
        reference = t2i.unet(noisy, timesteps=t, context=context)
        widened = model.predict_noise(noisy, t, context, source)
    assert torch.allclose(widened, reference, atol=1e-5)
    # the source channels are new weights, at zero
    w = model.unet.conv_in.conv.weight
    assert w.shape[1] == 8 and float(w[:, 4:].abs().max()) == 0.0
    # inference recognises InstructPix2Pix weights and widens a text-to-image model to take them
    torch.save(model.state_dict(), tmp_path / "ip2p.pt")
    again = load_model(tiny_model(3), tmp_path / "ip2p.pt")
    assert isinstance(again, InstructPix2Pix)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))
    assert from_text_to_image(again) is again


def test_condition_dropout_rates():
    model = tiny_ip2p(condition_dropout=0.2).train()
    n = 3000
    prompts, sources = model.drop_conditions([INSTRUCTION] * n, torch.ones(n, 4, 2, 2), torch.Generator().manual_seed(0))
    text = np.array([p == "" for p in prompts])
    source = (sources.flatten(1).sum(1) == 0).numpy()
    # text only, source only and both at 0.2 each: each condition is dropped for 40 %, both for 20 %
    assert abs(text.mean() - 0.4) < 0.03 and abs(source.mean() - 0.4) < 0.03 and abs((text & source).mean() - 0.2) < 0.03
    kept_prompts, kept = model.eval().drop_conditions([INSTRUCTION] * 4, torch.ones(4, 4, 2, 2), None)
    assert kept_prompts == [INSTRUCTION] * 4 and bool((kept == 1).all())


def test_schedule_arguments_reach_the_schedulers():
    """beta_start and beta_end set the training and sampling betas, as for text-to-image."""
    model = tiny_ip2p(beta_start=0.0001, beta_end=0.02, schedule="linear_beta")
    for scheduler in (model.train_scheduler(), model.sample_scheduler()):
        betas = scheduler.scheduler.betas  # the MONAI scheduler inside the latent drift wrapper
        assert betas[0].item() == pytest.approx(0.0001) and betas[-1].item() == pytest.approx(0.02)


def test_bad_use_is_one_clear_error():
    with pytest.raises(LdmonaiError, match="twice the latent channels"):
        InstructPix2Pix(tiny_model().autoencoder, tiny_model().unet, tiny_model().text_encoder)
    model = tiny_ip2p()
    images = torch.rand(2, 1, 16, 16)
    with pytest.raises(LdmonaiError, match="no 'source' images"):
        model(images, [INSTRUCTION] * 2)
    with pytest.raises(LdmonaiError, match="does not sample from text alone"):
        model.sample([INSTRUCTION], (8, 8))
    with pytest.raises(LdmonaiError, match="one instruction per source"):
        model.edit(images, [INSTRUCTION])
    with pytest.raises(LdmonaiError, match="takes no source image"):
        tiny_model().denoising_loss(torch.zeros(1, 4, 8, 8), ["x"], sources=torch.zeros(1, 4, 8, 8))


def _psnr(a, b):
    return float(10 * torch.log10((b.max() - b.min()) ** 2 / ((a - b) ** 2).mean()))


def test_learns_to_follow_the_source_and_the_instruction():
    """Trained on ageing pairs of disks (the target is the source after simulated atrophy), the
    edit of a source is closer to that source's own target than to another pair's target.

    The autoencoder is untrained, so targets are compared as the autoencoder renders them."""
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 16), torch.linspace(-1, 1, 16), indexing="ij")
    params = torch.rand(48, 3, generator=g) * torch.tensor([0.8, 0.8, 0.3]) + torch.tensor([-0.4, -0.4, 0.3])
    sources = torch.stack([(((xx - cx) ** 2 + (yy - cy) ** 2) < r**2).float()[None] for cx, cy, r in params])
    targets = torch.stack([torch.from_numpy(simulate_atrophy(s[0].numpy(), 10))[None] for s in sources])
    model = tiny_ip2p()
    model.scale_factor.fill_(1 / float(model.encode(sources).std()))
    src_lat, tgt_lat = model.encode(sources), model.encode(targets)
    opt = torch.optim.AdamW(model.unet.parameters(), 2e-3)
    model.train()
    for _ in range(300):
        idx = torch.randint(0, 40, (8,), generator=g)
        loss = model.denoising_loss(tgt_lat[idx], [INSTRUCTION] * 8, generator=g, sources=src_lat[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    test = slice(40, 48)
    edited = model.edit(sources[test], [INSTRUCTION] * 8, num_inference_steps=20, image_guidance=1.5, text_guidance=1.0,
                        generator=torch.Generator().manual_seed(1))
    rendered = model.decode(tgt_lat[test])
    own = _psnr(edited, rendered)
    other = _psnr(edited, rendered.roll(1, 0))
    print(f"edit vs its own target {own:.1f} dB, vs another pair's target {other:.1f} dB")
    assert own > other + MARGIN_DB


def test_ageing_instructions_and_simulated_atrophy():
    b = PromptBuilder(fields=("age",), age_style="word")
    assert b.instruction({"age": 70}, {"age": 77}) == INSTRUCTION
    yy, xx = np.meshgrid(np.linspace(-1, 1, 32), np.linspace(-1, 1, 32), indexing="ij")
    ring = ((xx**2 + yy**2) < 0.2**2).astype(np.float32)  # a bright centre stands in for a ventricle
    older = simulate_atrophy(ring, 10)
    assert older.sum() > ring.sum() * 1.2  # the central structure widened
    assert np.allclose(older[0], ring[0]) and np.allclose(simulate_atrophy(ring, 0), ring, atol=1e-6)
