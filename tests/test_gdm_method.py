"""GDM's parts on CPU: drift field, feature bank, gradient coordination, CT physics, metrics, checks."""

import math

import numpy as np
import pytest
import torch

from ldmonai.errors import LdmonaiError
from ldmonai.gdm import (
    CheckCTPaird, DriftingLoss, FeatureBank, FeatureDriftLoss, GDMObjective, IntensityMapping, Projector,
    RandomMultiScaleEncoder, StagedEncoder, coordinate_gradients, drift_field,
)
from ldmonai.metrics import image_metrics


def test_drift_is_antisymmetric_and_vanishes_on_equal_sets():
    g = torch.Generator().manual_seed(0)
    x, a, b = (torch.randn(64, 5, generator=g) for _ in range(3))
    v_ab = drift_field(x, a, b, tau=0.5, mask_self=False)
    v_ba = drift_field(x, b, a, tau=0.5, mask_self=False)
    torch.testing.assert_close(v_ab, -v_ba)
    assert v_ab.abs().max() > 1e-3
    # y+ and y- the same set: exactly zero
    assert drift_field(x, a, a, tau=0.5, mask_self=False).abs().max() < 1e-6


def _mixture(n, centres, g):
    idx = torch.randint(0, len(centres), (n,), generator=g)
    return torch.tensor(centres, dtype=torch.float32)[idx] + 0.3 * torch.randn(n, 2, generator=g)


def test_drift_points_from_generated_toward_real_on_a_2d_mixture():
    g = torch.Generator().manual_seed(1)
    real = _mixture(512, [[-2.0, 0.0], [2.0, 0.0]], g)
    generated = _mixture(512, [[-2.0, 3.0], [2.0, 3.0]], g)  # the same mixture, 3 units up
    v = drift_field(generated, real, None, tau=1.0)
    direction = (real.mean(0) - generated.mean(0)) / (real.mean(0) - generated.mean(0)).norm()
    cos = torch.nn.functional.cosine_similarity(v, direction[None], dim=1)
    assert cos.mean() > 0.8, cos.mean()
    # generated drawn from the real distribution: the drift is small next to the displaced case
    same = _mixture(512, [[-2.0, 0.0], [2.0, 0.0]], g)
    v_same = drift_field(same, real, None, tau=1.0)
    assert v_same.norm(dim=1).mean() < 0.2 * v.norm(dim=1).mean()


def test_drifting_loss_gradient_moves_samples_toward_data():
    g = torch.Generator().manual_seed(2)
    real = torch.randn(256, 4, generator=g)[None]
    x = (torch.randn(256, 4, generator=g) + 2.0)[None].requires_grad_(True)
    loss_fn = DriftingLoss()
    # the loss is a mean over N*C elements: scale the step so that each sample moves ~0.1 V
    opt = torch.optim.SGD([x], lr=0.1 * x.numel() / 2)
    start = (x.mean(1) - real.mean(1)).norm().item()
    for _ in range(100):
        opt.zero_grad()
        loss_fn(x, real).backward()
        opt.step()
    assert (x.mean(1) - real.mean(1)).norm().item() < 0.5 * start


def test_coordination_removes_conflict():
    g = torch.Generator().manual_seed(3)
    fid = torch.randn(4, 1, 6, 6, 6, generator=g)
    drift = -0.8 * fid + 0.3 * torch.randn(4, 1, 6, 6, 6, generator=g)  # conflicting
    drift[3] = fid[3] * 0.5  # one sample agrees
    for mode in ("project_drift", "project_fidelity", "symmetric"):
        combined, info = coordinate_gradients(fid, drift, mode)
        assert info["conflict"] == 0.75
        assert (info["cosine"][:3] < 0).all() and info["cosine"][3] > 0
        f, d = fid.flatten(1), drift.flatten(1)
        if mode == "project_drift":
            d_new = combined.flatten(1) - f
            assert ((d_new * f).sum(1) >= -1e-4).all()
        if mode == "project_fidelity":
            f_new = combined.flatten(1) - d
            assert ((f_new * d).sum(1) >= -1e-4).all()
        # the agreeing sample is untouched
        torch.testing.assert_close(combined[3], fid[3] + drift[3])
    with pytest.raises(ValueError):
        coordinate_gradients(fid, drift, "bogus")


def test_feature_bank_views_and_staged_encoder():
    enc = RandomMultiScaleEncoder(3, 1, (8, 16, 16), seed=0)
    bank = FeatureBank(enc)
    out = bank(torch.rand(2, 1, 32, 32, 32))
    assert {"raw", "global0", "global2", "local0_p2", "local0_p4", "spatial"} <= set(out)
    assert out["raw"].shape == (2, 8**3, 64)
    assert out["spatial"].shape == (2, 4**3, 16)
    assert out["local0_p4"].shape == (2, 4**3, 16)
    # same seed, same encoder: a feature space without a checkpoint file
    x = torch.rand(1, 1, 16, 16, 16)
    torch.testing.assert_close(enc(x)[-1], RandomMultiScaleEncoder(3, 1, (8, 16, 16), seed=0)(x)[-1])
    assert not any(p.requires_grad for p in enc.parameters())
    # any MONAI network through hooks; the stages stop the forward early
    from monai.networks.nets import SegResNet

    staged = StagedEncoder(SegResNet(3, 8, 1, 2), ["down_layers.0", "down_layers.1"])
    maps = staged(torch.rand(1, 1, 16, 16, 16))
    assert [m.shape[1] for m in maps] == [8, 16]
    with pytest.raises(ValueError, match="not in the network"):
        StagedEncoder(SegResNet(3, 8, 1, 2), ["nope"])


def test_objective_regression_and_drift_paths():
    torch.manual_seed(0)
    out = torch.rand(2, 1, 16, 16, 16) * 2 - 1
    target = torch.rand(2, 1, 16, 16, 16) * 2 - 1
    mask = torch.ones_like(out)
    g_reg, terms = GDMObjective(None)(out, target, mask)
    assert set(terms) == {"mae_hu", "loss"} and terms["mae_hu"] > 100
    drift = FeatureDriftLoss(FeatureBank(RandomMultiScaleEncoder(3, 1, (8, 8), seed=0)), max_tokens=64)
    g, terms = GDMObjective(drift, drift_weight=0.1)(out, target, mask)
    assert g.shape == out.shape and torch.isfinite(g).all()
    assert {"drift", "cosine", "conflict", "drift_rms"} <= set(terms)
    assert not torch.allclose(g, g_reg)


def _disk(n):
    xs = torch.arange(n) - (n - 1) / 2
    x, y = torch.meshgrid(xs, xs, indexing="ij")
    img = ((x - 3) ** 2 + (y + 2) ** 2 < (0.35 * n) ** 2).float()
    return img + 0.5 * ((x + 5) ** 2 / 36 + (y - 4) ** 2 / 16 < 1).float()


@pytest.mark.parametrize("geometry", ["parallel", "fan"])
def test_projector_line_integrals_and_fbp(geometry):
    n = 48
    img = _disk(n)[None, None]
    full = Projector((n, n), 360, geometry)
    sino = full(img)
    # a central ray crosses the big disk (diameter 0.7 n) and the small ellipse
    assert sino.max() == pytest.approx(0.7 * n + 0.5 * 12, rel=0.1)
    rec = full.fbp(sino)
    assert (rec - img).abs().mean() < 0.04
    sparse = Projector((n, n), 18, geometry)
    rec18 = sparse.fbp(sparse(img))
    assert (rec18 - img).abs().mean() > (rec - img).abs().mean()
    refined = sparse.refine(rec18, sparse(img), steps=10)
    assert (sparse(refined) - sparse(img)).abs().mean() < 0.7 * (sparse(rec18) - sparse(img)).abs().mean()
    # the adjoint: <A x, y> == <x, A^T y>
    y = torch.rand(sparse(img).shape)
    lhs = (sparse(img) * y).sum()
    rhs = (img * sparse.backproject(y)).sum()
    assert lhs.item() == pytest.approx(rhs.item(), rel=1e-4)
    # volumes go slice by slice
    vol = img[..., None].repeat(1, 1, 1, 1, 3)
    assert sparse(vol).shape == (1, 1, 18, sparse.num_detectors, 3)
    assert sparse.fbp(sparse(vol)).shape == vol.shape


def test_synthrad_metrics():
    rng = np.random.default_rng(0)
    gt = rng.uniform(-1000, 1500, (40, 40, 40))
    mask = np.zeros_like(gt)
    mask[5:35, 5:35, 5:35] = 1
    same = image_metrics(gt, gt, mask)
    assert same["mae"] == 0 and math.isinf(same["psnr"]) and same["ms_ssim"] == pytest.approx(1) and same["ssim"] == pytest.approx(1)
    noisy = gt + rng.normal(0, 50, gt.shape)
    m = image_metrics(gt, noisy, mask)
    assert 35 < m["mae"] < 45  # E|N(0, 50)| = 40
    from skimage.metrics import peak_signal_noise_ratio

    inside = mask > 0
    ref = peak_signal_noise_ratio(np.clip(gt, -1024, 3071)[inside], np.clip(noisy, -1024, 3071)[inside], data_range=4095)
    assert m["psnr"] == pytest.approx(ref)
    worse = image_metrics(gt, gt + rng.normal(0, 300, gt.shape), mask)
    assert worse["ms_ssim"] < m["ms_ssim"] and worse["ssim"] < m["ssim"] and worse["psnr"] < m["psnr"]
    # outside the mask nothing counts
    off = gt.copy()
    off[mask == 0] += 500
    assert image_metrics(gt, off, mask)["mae"] == 0


def test_intensity_mapping_fits_a_lookup():
    x = np.linspace(0, 1, 1000)
    lut = IntensityMapping(bins=10).fit([(x, 100 * np.floor(x * 10), None)])
    assert lut(torch.tensor([0.05, 0.55, 0.99])).tolist() == [0.0, 500.0, 900.0]


def _pair(shape_ct=(16, 16, 16), ct_offset=0.0, mask=True, shift=0.0):
    from monai.data import MetaTensor

    affine = torch.eye(4, dtype=torch.float64)
    ct_aff = affine.clone()
    ct_aff[0, 3] = shift
    mr = MetaTensor(torch.rand(1, 16, 16, 16), affine=affine, meta={"filename_or_obj": "/d/P1/mr.mha"})
    ct_vals = torch.full((1, *shape_ct), 40.0)
    ct_vals[..., :4] = -1000
    ct_vals[..., -2:] = 900
    ct = MetaTensor(ct_vals + ct_offset, affine=ct_aff, meta={"filename_or_obj": "/d/P1/ct.mha"})
    d = {"image": mr, "label": ct, "case": "P1"}
    if mask:
        d["mask"] = MetaTensor(torch.ones(1, 16, 16, 16), affine=affine)
    return d


def test_checks_name_the_case():
    CheckCTPaird()(_pair())
    with pytest.raises(LdmonaiError, match="P1.*differs") as err:
        CheckCTPaird()(_pair(shape_ct=(16, 16, 12)))
    assert "ct.mha" in str(err.value) and "resample" in str(err.value)
    with pytest.raises(LdmonaiError, match="different geometry"):
        CheckCTPaird()(_pair(shift=5.0))
    nan = _pair()
    nan["image"][0, 0, 0, 0] = float("nan")
    with pytest.raises(LdmonaiError, match="NaN"):
        CheckCTPaird()(nan)
    with pytest.warns(UserWarning, match="P1: no mask, using a body mask"):
        out = CheckCTPaird()(_pair(mask=False))
    assert out["mask"].shape == (1, 16, 16, 16)
    with pytest.warns(UserWarning, match="P1: CT values span.*does not look like HU"):
        CheckCTPaird()(_pair(ct_offset=1024.0))


def test_residual_generator_starts_as_identity_and_learns_a_correction():
    from monai.networks.nets import UNet

    from ldmonai.networks import ResidualGenerator

    torch.manual_seed(0)
    gen = ResidualGenerator(UNet(3, 2, 1, (4, 8), (2,), num_res_units=0))
    x = torch.randn(2, 2, 8, 8, 8)
    assert torch.equal(gen(x), x[:, :1])
    target = x[:, :1] + 0.5
    opt = torch.optim.Adam(gen.parameters(), 1e-2)
    first = None
    for _ in range(60):
        loss = (gen(x) - target).abs().mean()
        first = first if first is not None else float(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.5 * first and float(gen.gate) != 0.0


def test_rflow_translator_moves_saves_and_learns():
    from ldmonai.gdm import RFlowTranslator

    torch.manual_seed(0)
    flow = RFlowTranslator(2, 1, 1, channels=(8, 16), attention_levels=(False, False), norm_num_groups=8,
                           num_inference_steps=10).to("cpu")
    assert all(k.startswith("unet.") for k in flow.state_dict())
    cond = torch.rand(4, 1, 16, 16)
    target = 1.0 - 2.0 * cond  # a fixed map from condition to target
    before = (flow(cond) - target).abs().mean()
    opt = torch.optim.Adam(flow.parameters(), 3e-3)
    for _ in range(150):
        loss = flow(cond, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    flow.eval()
    after = (flow(cond) - target).abs().mean()
    assert flow(cond).shape == target.shape
    assert after < 0.5 * before, (float(before), float(after))


def test_data_consistency_pulls_the_reconstruction_toward_the_views():
    from ldmonai.data import shepp_logan_volume
    from ldmonai.gdm import DataConsistencyd, Projector, SparseViewd, hu_to_attenuation, hu_to_unit, unit_to_hu

    vol = hu_to_unit(torch.as_tensor(shepp_logan_volume(32, 4)).float())[None]  # (1, 32, 32, 4), unit range
    d = SparseViewd(num_views=18, sinogram_key="sinogram")({"label": vol})
    d["pred"] = d["image"].clone()  # the FBP stands in for a generator output
    assert torch.equal(DataConsistencyd(steps=0, num_views=18)(d)["pred"], d["pred"])
    refined = DataConsistencyd(steps=5, num_views=18)(d)["pred"]
    proj = Projector((32, 32), 18)

    def residual(x):
        return float((proj(hu_to_attenuation(unit_to_hu(x))[None]) - d["sinogram"][None]).abs().mean())

    assert residual(refined) < 0.7 * residual(d["pred"])
    with pytest.raises(LdmonaiError, match="no 'sinogram'"):
        DataConsistencyd(steps=1)({"pred": d["pred"]})
