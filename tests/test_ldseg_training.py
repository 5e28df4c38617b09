"""LDSeg's training and sampling parts against answers known in closed form.

An oracle denoiser (one that returns the true z0, or the true noise) must make DDIM land on
the encoded label exactly, whatever the prediction type, the latent normalisation and its
per-step renormalisation; the EMA must follow its recursion; the loss check must fire on a
flat loss only; distances must come out in mm.
"""

import json
import logging

import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor
from monai.networks.utils import one_hot
from torch import nn

from ldmonai.data import evaluation_split, label_names
from ldmonai.engines import BestModelSaver, ConfiguredCheckpointLoader, LossNotFallingWarning, checkpoint_config
from ldmonai.errors import LdmonaiError
from ldmonai.ldseg import LDSeg, SegmenterInferer
from ldmonai.ldseg.label_autoencoder import standardise
from ldmonai.metrics import HausdorffDistanceMM

TINY = dict(latent_channels=2, embed_channels=4, encoder_channels=(8, 16), denoiser_channels=(16, 32),
            denoiser_attention=(False, False), denoiser_res_blocks=1, norm_num_groups=8, num_head_channels=8)


def test_standardise_gives_zero_mean_unit_variance_per_item():
    z = torch.randn(3, 2, 5, 6) * torch.tensor([1.0, 7.0, 0.1]).view(3, 1, 1, 1) + 4.0
    s = standardise(z)
    torch.testing.assert_close(s.mean((1, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    sd = z.std((1, 2, 3), unbiased=False)
    torch.testing.assert_close(s.std((1, 2, 3), unbiased=False), sd / (sd + 1e-5), atol=1e-6, rtol=0)
    # idempotent up to eps: renormalising a clean latent is a no-op
    torch.testing.assert_close(standardise(s), s, atol=3e-4, rtol=0)


class Oracle(nn.Module):
    """The optimal denoiser for one known latent z0: its z0, or the exact noise in x_t."""

    def __init__(self, z0: torch.Tensor, scheduler, predict: str) -> None:
        super().__init__()
        self.register_buffer("z0", z0)
        self.register_buffer("abar", scheduler.alphas_cumprod.float())
        self.predict = predict

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        z_t = x[:, : self.z0.shape[1]]
        if self.predict == "sample":
            return self.z0.expand_as(z_t)
        abar = self.abar[t].view(-1, *([1] * (z_t.ndim - 1)))
        return (z_t - abar.sqrt() * self.z0) / (1 - abar).sqrt()


@pytest.mark.parametrize("predict, norm", [("sample", "standardise"), ("epsilon", "standardise"), ("sample", "tanh")])
def test_an_oracle_denoiser_samples_the_encoded_label_exactly(predict, norm):
    torch.manual_seed(0)
    net = LDSeg(2, 1, 3, **TINY, prediction_type=predict, latent_norm=norm, ema_decay=None).eval()
    label = torch.randint(0, 3, (1, 1, 32, 32))
    with torch.no_grad():
        z0 = net.label_autoencoder.encode(one_hot(label, 3))
        expected = torch.softmax(net.label_autoencoder.decode(z0), 1)
    net.denoiser = Oracle(z0, net.scheduler, predict)
    probs = net.sample(torch.rand(1, 1, 32, 32), num_samples=2, generator=torch.Generator().manual_seed(3))
    # DDIM (eta 0) with the true x0 lands on it at the last step, from any start noise
    torch.testing.assert_close(probs[0], expected, atol=2e-4, rtol=0)
    torch.testing.assert_close(probs[1], expected, atol=2e-4, rtol=0)


def test_sample_prediction_trains_the_denoiser_towards_z0():
    torch.manual_seed(0)
    net = LDSeg(2, 1, 3, **TINY)
    image, label = torch.rand(2, 1, 32, 32), torch.randint(0, 3, (2, 1, 32, 32))
    out = net.training_outputs(image, label)
    # the denoising target is z0 itself; the decoder reads the prediction
    torch.testing.assert_close(out["noise"], net.label_autoencoder.encode(one_hot(label, 3)))
    torch.testing.assert_close(out["logits"], net.label_autoencoder.decode(out["noise_pred"]))


def test_ema_follows_its_warmed_up_recursion():
    torch.manual_seed(0)
    net = LDSeg(2, 1, 3, **TINY, ema_decay=0.9)
    weight = net.denoiser.conv_in.conv.weight
    values = [1.0, 3.0, -2.0, 5.0]
    expected = None
    for n, v in enumerate(values):
        with torch.no_grad():
            weight.fill_(v)
        net.update_ema()
        # first update copies; then d = min(0.9, (1 + n) / (10 + n)) with n updates so far
        d = min(0.9, (1 + n) / (10 + n))
        expected = v if expected is None else d * expected + (1 - d) * v
    ema_weight = net.ema_denoiser.module.conv_in.conv.weight
    torch.testing.assert_close(ema_weight, torch.full_like(ema_weight, expected))
    assert net.sampling_denoiser() is net.ema_denoiser.module
    assert not any(p.requires_grad for p in net.ema_denoiser.parameters())
    # the average travels in the training state; the sampling weights put it in the denoiser's place
    assert any(k.startswith("ema_denoiser.") for k in net.state_dict())
    sampling = net.sampling_state_dict()
    assert not any(k.startswith("ema_denoiser.") for k in sampling)
    torch.testing.assert_close(sampling["denoiser.conv_in.conv.weight"], ema_weight)


def _engine_with(values):
    engine = Engine(lambda e, batch: {"noise": torch.tensor(values[e.state.iteration - 1])})
    check = LossNotFallingWarning("noise", after_iterations=40, window=10)
    check.attach(engine)
    engine.run(range(len(values)), max_epochs=1)
    return engine


def test_loss_not_falling_warns_once_on_a_flat_loss_only(caplog):
    with caplog.at_level(logging.WARNING, logger="ldmonai"):
        flat = _engine_with([1.0 + 0.01 * ((i * 7) % 3) for i in range(60)])
    assert flat.state.not_learning["noise"][0] == pytest.approx(1.01, abs=0.01)
    assert sum("has not fallen after 40 iterations" in r.message for r in caplog.records) == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ldmonai"):
        falling = _engine_with([1.0 / (1 + 0.2 * i) for i in range(60)])
    assert not hasattr(falling.state, "not_learning") and not caplog.records


def test_checkpoint_carries_its_config_and_a_contradiction_is_one_line(tmp_path):
    torch.manual_seed(0)
    net = LDSeg(2, 1, 3, **TINY)
    config = {"spatial_dims": 2, "num_classes": 3, "label_names": {0: "background", 1: "a", 2: "b"}, **TINY}
    saver = BestModelSaver(tmp_path, net, config=config)
    saver(type("E", (), {"state": type("S", (), {"epoch": 1, "best_metric_epoch": 1})()})())
    saved = checkpoint_config(tmp_path / "model.pt")
    assert saved["num_classes"] == 3 and saved["label_names"] == {"0": "background", "1": "a", "2": "b"}
    assert saved["encoder_channels"] == [8, 16]
    other = LDSeg(2, 1, 3, **TINY, ema_decay=None)  # as inference builds it: model.pt holds no second average
    ConfiguredCheckpointLoader(tmp_path / "model.pt", other, {"num_classes": 3})()
    torch.testing.assert_close(other.state_dict(), net.sampling_state_dict())
    with pytest.raises(LdmonaiError, match="trained with num_classes=3, but this run uses num_classes=4"):
        ConfiguredCheckpointLoader(tmp_path / "model.pt", LDSeg(2, 1, 4, **TINY, ema_decay=None), {"num_classes": 4})()
    # a plain state dict has no config: the load itself is checked, in one line
    torch.save(net.state_dict(), tmp_path / "plain.pt")
    assert checkpoint_config(tmp_path / "plain.pt") == {}
    with pytest.raises(LdmonaiError, match="do not fit this network") as err:
        ConfiguredCheckpointLoader(tmp_path / "plain.pt", LDSeg(3, 1, 3, **TINY), {})()
    assert "\n" not in str(err.value)


def test_inference_is_deterministic_per_request_by_default():
    torch.manual_seed(0)
    net = LDSeg(2, 1, 3, **TINY).eval()
    # MONAI zero-initialises the denoiser's output: an untrained one ignores the noise entirely
    for p in net.denoiser.out.parameters():
        torch.nn.init.normal_(p, std=0.2)
    image = torch.rand(1, 1, 48, 40)
    seeded = SegmenterInferer(roi_size=(32, 32), num_samples=2, uncertainty=True)
    torch.testing.assert_close(seeded(image, net), seeded(image, net), rtol=0, atol=0)
    fresh = SegmenterInferer(roi_size=(32, 32), num_samples=2, uncertainty=True, seed=None)
    assert not torch.equal(fresh(image, net), fresh(image, net))


def test_hausdorff_handler_reports_millimetres():
    pred = torch.zeros(1, 2, 20, 20, 20)
    ref = torch.zeros(1, 2, 20, 20, 20)
    pred[0, 1, 5:10, 5:10, 5:10] = 1
    ref[0, 1, 5:10, 5:10, 8:13] = 1  # shifted 3 voxels along the last axis
    pred[0, 0], ref[0, 0] = 1 - pred[0, 1], 1 - ref[0, 1]
    meta = {"pixdim": torch.tensor([1.0, 0.5, 0.5, 2.5, 1, 1, 1, 1])}
    metric = HausdorffDistanceMM(include_background=False, percentile=None, save_details=False)
    metric.reset()
    metric.update(([MetaTensor(pred[0], meta=meta)], [ref[0]]))
    assert metric.compute() == pytest.approx(3 * 2.5)  # 3 voxels of 2.5 mm


def test_label_names_and_split_come_from_the_datalist(tmp_path):
    datalist = tmp_path / "d.json"
    datalist.write_text(json.dumps({"labels": {"0": "background", "2": "tibia"}, "training": [{}], "test": [{}]}))
    assert label_names(datalist, 3) == {"0": "background", "1": "label_1", "2": "tibia"}
    assert evaluation_split(datalist) == "test"
    datalist.write_text(json.dumps({"training": [{}], "validation": [{}]}))
    assert evaluation_split(datalist) == "validation"


def test_optional_spacing_resamples_and_inverts_back_onto_the_input_grid():
    import numpy as np
    from monai.transforms import Compose, Invertd

    from ldmonai.data import OptionalSpacingd

    affine = torch.tensor([[0.0, -2.0, 0.0, 10.0], [2.0, 0.0, 0.0, -5.0], [0.0, 0.0, 1.0, 3.0], [0, 0, 0, 1.0]])
    image = MetaTensor(torch.rand(1, 20, 16, 24), affine=affine, meta={"filename_or_obj": "head.nii.gz"})
    pre = Compose([OptionalSpacingd("image", pixdim=(4.0, 4.0, 4.0), mode="bilinear")])
    d = pre({"image": image, "image_path": "as MONAI Label sends it"})
    assert d["image_path"] == "as MONAI Label sends it"
    # 40x32x24 mm at 4 mm; MONAI rounds the centre-to-centre extent up, (24 - 1) / 4 + 1 -> 7
    assert tuple(d["image"].shape[1:]) == (10, 8, 7)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(d["image"].affine)[:3, :3], axis=0), [4.0, 4.0, 4.0], atol=1e-5)
    d["seg"] = MetaTensor((d["image"] > 0.5).float())
    back = Invertd("seg", transform=pre, orig_keys="image", nearest_interp=True)(d)
    assert tuple(back["seg"].shape[1:]) == (20, 16, 24)
    np.testing.assert_allclose(np.asarray(back["seg"].affine), affine.numpy(), atol=1e-5)
    # off: nothing is resampled and the inverse is a no-op
    off = Compose([OptionalSpacingd("image", pixdim=None)])
    same = off({"image": image})
    assert same["image"] is image
    d2 = {"image": same["image"], "seg": MetaTensor(torch.ones(1, 20, 16, 24))}
    assert tuple(Invertd("seg", transform=off, orig_keys="image")(d2)["seg"].shape[1:]) == (20, 16, 24)
