"""LDSeg parts on their own: shapes, sampling, uncertainty, loss, inferer, checks."""

import json
import math
from pathlib import Path

import pytest
import torch
from monai.data import MetaTensor

from ldmonai.errors import LdmonaiError
from ldmonai.ldseg import (
    CheckSegmentationPaird,
    DeterministicSegmenter,
    LDSeg,
    PixelDiffusionSegmenter,
    SegmentationLoss,
    SegmenterInferer,
    SplitUncertaintyd,
    UncertaintySummaryd,
    uncertainty_maps,
)

TINY = dict(
    latent_channels=4, embed_channels=8, encoder_channels=(8, 16), denoiser_channels=(16, 32),
    denoiser_attention=(False, False), denoiser_res_blocks=1, norm_num_groups=8, num_head_channels=8,
)


def tiny_ldseg(dims=2, classes=3, **kw):
    torch.manual_seed(0)
    return LDSeg(dims, 1, classes, **{**TINY, **kw})


@pytest.mark.parametrize("dims,size", [(2, (32, 48)), (3, (16, 16, 24))])
def test_shapes_and_probabilities(dims, size):
    net = tiny_ldseg(dims)
    image = torch.rand(2, 1, *size)
    label = torch.randint(0, 3, (2, 1, *size))
    out = net.training_outputs(image, label)
    assert out["logits"].shape == (2, 3, *size)
    latent = tuple(s // 4 for s in size)
    assert out["noise"].shape == out["noise_pred"].shape == (2, 4, *latent)
    probs = net.sample(image, num_samples=3)
    assert probs.shape == (3, 2, 3, *size)
    torch.testing.assert_close(probs.sum(2), torch.ones(3, 2, *size))
    assert net(image).shape == (2, 3, *size)


def test_one_noise_draw_per_item():
    # epsilon prediction returns the drawn noise (sample prediction returns z0 as its target)
    net = tiny_ldseg(prediction_type="epsilon")
    image = torch.rand(1, 1, 32, 32).repeat(4, 1, 1, 1)
    label = torch.randint(0, 3, (1, 1, 32, 32)).repeat(4, 1, 1, 1)
    noise = net.training_outputs(image, label)["noise"]
    assert not torch.allclose(noise[0], noise[1])


def test_samples_batched_in_one_pass_and_reproducible():
    net = tiny_ldseg().eval()
    # MONAI zero-initialises the denoiser's output: an untrained one ignores the noise entirely
    for p in net.denoiser.out.parameters():
        torch.nn.init.normal_(p, std=0.2)
    calls = []
    net.denoiser.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    image = torch.rand(2, 1, 32, 32)
    a = net.sample(image, num_samples=5, generator=torch.Generator().manual_seed(1))
    # 10 DDIM steps, each one forward over all 5 x 2 latents.
    assert calls == [10] * 10
    b = net.sample(image, num_samples=5, generator=torch.Generator().manual_seed(1))
    c = net.sample(image, num_samples=5, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_ddpm_sampler_switch():
    net = tiny_ldseg(sampler="ddpm", num_inference_steps=20).eval()
    calls = []
    net.denoiser.register_forward_hook(lambda m, i, o: calls.append(1))
    net.sample(torch.rand(1, 1, 32, 32))
    assert len(calls) == 20


def test_indivisible_size_is_refused_with_the_fix():
    net = tiny_ldseg()
    assert (net.latent_factor, net.factor) == (4, 8)  # 2 encoder stages, then a 2-level denoiser
    with pytest.raises(ValueError, match="divisible by 8"):
        net.sample(torch.rand(1, 1, 30, 32))
    # 36 halves twice for the latent (9x9), but the denoiser cannot halve 9 again
    with pytest.raises(ValueError, match="divisible by 8"):
        net.sample(torch.rand(1, 1, 36, 32))


def test_uncertainty_maps():
    # Two samples that agree on voxel 0 and disagree on voxel 1.
    p = torch.tensor([[[[1.0, 1.0]], [[0.0, 0.0]]], [[[1.0, 0.0]], [[0.0, 1.0]]]])  # (N=2, C=2, 1, 2)
    probs = p[:, None]  # (N, B=1, C, 1, 2)
    maps = uncertainty_maps(probs)
    torch.testing.assert_close(maps["prob"][0, :, 0], torch.tensor([[1.0, 0.5], [0.0, 0.5]]))
    assert maps["seg"][0, 0, 0, 0] == 0
    torch.testing.assert_close(maps["entropy"][0, 0, 0], torch.tensor([0.0, math.log(2)]))
    torch.testing.assert_close(maps["variance"][0, 0, 0], torch.tensor([0.0, 0.25]))


def test_loss_terms():
    loss = SegmentationLoss(noise_weight=0.5)
    label = torch.randint(0, 3, (2, 1, 8, 8))
    perfect = torch.nn.functional.one_hot(label[:, 0], 3).permute(0, 3, 1, 2).float() * 50
    noise = torch.randn(2, 4, 2, 2)
    terms = loss({"logits": perfect, "noise": noise, "noise_pred": noise + 1.0}, label)
    assert terms["ce"] < 1e-3 and terms["dice"] < 1e-3
    assert terms["noise"] == pytest.approx(1.0)
    assert terms["loss"] == pytest.approx(float(terms["ce"] + 2 * terms["dice"] + 0.5), rel=1e-4)
    wrong = loss({"logits": -perfect}, label)
    assert wrong["dice"] > 0.9 and "noise" not in wrong
    with pytest.raises(ValueError):
        loss({}, label)


def test_baselines_share_the_interface():
    image = torch.rand(1, 1, 16, 16)
    label = torch.randint(0, 3, (1, 1, 16, 16))
    unet = DeterministicSegmenter(torch.nn.Conv2d(1, 3, 3, padding=1), 3)
    assert set(unet(image, label)) == {"logits"}
    assert unet.sample(image, 4).shape == (4, 1, 3, 16, 16)
    pix = PixelDiffusionSegmenter(2, 1, 3, channels=(8, 16), attention_levels=(False, False), num_res_blocks=1,
                                  norm_num_groups=8, num_head_channels=8, sampler="ddim", num_inference_steps=3)
    assert set(pix(image, label)) == {"noise", "noise_pred"}
    probs = pix.sample(image, 2)
    assert probs.shape == (2, 1, 3, 16, 16)
    torch.testing.assert_close(probs.sum(2), torch.ones(2, 1, 16, 16))


def test_sliding_window_inferer_and_split_keep_the_grid():
    net = tiny_ldseg().eval()
    affine = torch.diag(torch.tensor([0.8, 0.9, 1.0, 1.0]))
    image = MetaTensor(torch.rand(1, 1, 40, 56), affine=affine, meta={"filename_or_obj": "x.nii.gz"})
    out = SegmenterInferer(roi_size=(32, 32), num_samples=3, uncertainty=True)(image, net)
    assert out.shape == (1, 5, 40, 56)
    d = SplitUncertaintyd("pred", num_classes=3)({"image": image[0], "pred": out[0]})
    assert d["seg"].shape == (1, 40, 56) and d["seg"].dtype == torch.uint8
    assert int(d["seg"].max()) < 3
    for key in ("seg", "entropy", "variance"):
        torch.testing.assert_close(d[key].affine, affine.double() if d[key].affine.dtype == torch.float64 else affine)
    assert float(d["entropy"].max()) <= math.log(3) + 1e-5
    plain = SegmenterInferer(roi_size=(32, 32), num_samples=2)(image, net)
    assert plain.shape == (1, 3, 40, 56)
    # MONAI Label's convention: pred holds the label map; the uncertainty summary goes in result.
    m = SplitUncertaintyd("pred", num_classes=3, replace_with="seg")({"image": image[0], "pred": out[0]})
    torch.testing.assert_close(m["pred"], m["seg"])
    m = UncertaintySummaryd(label_names={0: "background", 1: "a"})(m)
    unc = m["result"]["uncertainty"]
    assert set(unc) == {"entropy", "variance"}
    seg, ent = m["seg"], m["entropy"]
    present = torch.unique(seg).tolist()
    assert set(unc["entropy"]) == {"all", *({0: "background", 1: "a"}.get(c, str(c)) for c in present)}
    assert math.isclose(unc["entropy"]["all"], float(ent.mean()), rel_tol=1e-5)
    if 0 in present:
        assert math.isclose(unc["entropy"]["background"], float(ent[seg == 0].mean()), rel_tol=1e-5)
    with pytest.raises(ValueError, match="replace_with"):
        SplitUncertaintyd("pred", num_classes=3, replace_with="probability")


def _pair(image, label, name="case_7.nii.gz"):
    return {
        "image": MetaTensor(image, meta={"filename_or_obj": f"/data/images/{name}"}),
        "label": MetaTensor(label, meta={"filename_or_obj": f"/data/labels/{name}"}),
    }


def test_bad_pairs_are_named():
    check = CheckSegmentationPaird(num_classes=3)
    ok = _pair(torch.rand(1, 8, 8), torch.randint(0, 3, (1, 8, 8)).float())
    assert check(ok) is not None
    with pytest.raises(LdmonaiError, match=r"labels/case_7.*differs from image shape.*resample"):
        check(_pair(torch.rand(1, 8, 8), torch.zeros(1, 8, 6)))
    with pytest.raises(LdmonaiError, match=r"labels/case_7.*\[0, 2\], found range \[5, 5\]"):
        check(_pair(torch.rand(1, 8, 8), torch.full((1, 8, 8), 5.0)))
    with pytest.raises(LdmonaiError, match="integers"):
        check(_pair(torch.rand(1, 8, 8), torch.full((1, 8, 8), 0.5)))
    nan = torch.rand(1, 8, 8)
    nan[0, 0, 0] = float("nan")
    with pytest.raises(LdmonaiError, match=r"images/case_7.*NaN"):
        check(_pair(nan, torch.zeros(1, 8, 8)))
    with pytest.raises(LdmonaiError, match="has no 'label'"):
        check({"image": ok["image"]})


@pytest.mark.slow
def test_paper_3d_network_builds_trains_and_samples_on_cpu():
    """The published 3D sizes (the bundle's configs/paper.json) at a reduced input (64^3): one
    training step and one sampling pass."""
    paper = json.loads((Path(__file__).resolve().parents[1] / "bundles/ldseg/configs/paper.json").read_text())
    keys = ["latent_channels", "embed_channels", "encoder_channels", "num_res_units", "denoiser_channels",
            "denoiser_attention", "denoiser_res_blocks", "norm_num_groups", "num_head_channels", "num_inference_steps"]
    torch.manual_seed(0)
    net = LDSeg(3, 1, 4, **{k: paper[k] for k in keys})
    assert (net.latent_factor, net.factor) == (16, 64)
    # the published denoiser: 16/32/64 wide, single-head attention on the two coarse levels
    assert [b.resnets[0].conv2.conv.out_channels for b in net.denoiser.down_blocks] == [16, 32, 64]
    assert net.denoiser.conv_in.conv.in_channels == 2  # 1-channel latent + 1-channel embedding
    image = torch.rand(1, 1, 64, 64, 64)
    label = torch.randint(0, 4, (1, 1, 64, 64, 64))
    opt = torch.optim.AdamW(net.parameters(), 1e-4)
    terms = SegmentationLoss()(net(image, label), label)
    terms["loss"].backward()
    opt.step()
    assert all(torch.isfinite(v) for v in terms.values())
    net.eval()
    probs = net.sample(image, num_samples=2)
    assert probs.shape == (2, 1, 4, 64, 64, 64)


def test_sampling_replays_the_denoiser_with_the_same_numbers():
    """Eval-mode sampling runs the denoiser from a TorchScript trace: the samples equal, bit for
    bit, those of the same loop through the module (here forced by putting it in train mode)."""
    net = tiny_ldseg(3).eval()
    image = torch.rand(2, 1, 16, 16, 16)
    replayed = net.sample(image, 2, generator=torch.Generator().manual_seed(1))
    net.denoiser.train()
    direct = net.sample(image, 2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(replayed, direct)


def test_replayer_traces_once_per_shape_and_follows_the_weights():
    from monai.networks.nets import DiffusionModelUNet
    from torch.utils.flop_counter import FlopCounterMode

    from ldmonai.networks import replayer
    from ldmonai.networks.replay import _TRACES

    torch.manual_seed(0)
    unet = DiffusionModelUNet(
        2, 2, 1, channels=(8, 16), attention_levels=(False, True), num_res_blocks=1, norm_num_groups=8,
        num_head_channels=8,
    ).eval()
    x, t = torch.randn(2, 2, 8, 8), torch.tensor([10, 900])
    assert replayer(unet) is unet  # gradients on: training steps never see a trace
    with torch.no_grad():
        fn = replayer(unet)
        assert fn is not unet
        assert torch.equal(fn(x, t), unet(x, t))
        fn(x, t)
        small = torch.randn(1, 2, 16, 16)
        assert torch.equal(fn(small, t[:1]), unet(small, t[:1]))
        assert len(_TRACES[unet]) == 3  # the weights' fingerprint and two input signatures
        next(unet.parameters()).mul_(2)  # an in-place update, as an optimiser step makes
        assert torch.equal(fn(x, t), unet(x, t))
        unet.load_state_dict({k: v * 0.5 for k, v in unet.state_dict().items()}, assign=True)
        assert torch.equal(replayer(unet)(x, t), unet(x, t))  # new tensors: traced again
        assert replayer(unet.train()) is unet
        unet.eval()
        with FlopCounterMode(display=False):
            assert replayer(unet) is unet
        handle = unet.register_forward_hook(lambda *a: None)
        assert replayer(unet) is unet  # a trace would skip the hook
        handle.remove()


@pytest.mark.parametrize("dims", [2, 3])
def test_label_decoder_inference_path_matches_training_path(dims):
    """Inference runs the decoder's full-resolution stage channels-last; the numbers match the
    channels-first path that training uses, to float rounding, and come back channels-first."""
    from ldmonai.networks import ConvUp

    torch.manual_seed(0)
    decoder = ConvUp(dims, 2, 3, (8, 16), 1).eval()
    z = torch.randn(1, 2, *[4] * dims)
    with torch.no_grad():
        fast = decoder(z)
    slow = decoder(z).detach()
    assert fast.is_contiguous() and fast.shape == slow.shape == (1, 3, *[16] * dims)
    torch.testing.assert_close(fast, slow, atol=1e-4, rtol=1e-4)
