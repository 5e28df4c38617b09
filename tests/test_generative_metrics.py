"""FID and KID between slice sets, on the offline fallback features and on local weights."""

import pytest
import torch
from monai.networks.nets import ResNet

from ldmonai.errors import LdmonaiError
from ldmonai.metrics.generative import SliceFeatures, generative_metrics, kid


def _disks(n, radius, seed):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    centre = (torch.rand(n, 2, generator=g) - 0.5) * 0.6
    r = radius * (1 + 0.2 * torch.rand(n, generator=g))
    disks = ((xx - centre[:, :1, None]) ** 2 + (yy - centre[:, 1:, None]) ** 2 < r[:, None, None] ** 2).float()
    return (disks + 0.05 * torch.randn(n, 32, 32, generator=g))[:, None]


def test_kid_is_unbiased_and_grows_with_the_shift():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(200, 16, generator=g), torch.randn(200, 16, generator=g)
    same, _ = kid(a, b, subset_size=100)
    shifted, _ = kid(a + 0.5, b, subset_size=100)
    assert abs(same) < 0.02 and shifted > 10 * max(abs(same), 1e-3)
    with pytest.raises(LdmonaiError, match="do not match"):
        kid(a, torch.randn(10, 8))


def test_fid_and_kid_rank_slice_sets():
    features = SliceFeatures(size=64)
    real = _disks(48, 0.4, 0)
    near = generative_metrics(_disks(48, 0.4, 1), real, features)
    far = generative_metrics(_disks(48, 0.15, 2), real, features)
    assert near["fid"] < far["fid"] and near["kid"] < far["kid"]
    assert "offline fallback" in near["features"]


def test_local_weights_are_used_and_bad_files_are_clear(tmp_path):
    torch.manual_seed(5)
    net = ResNet("basic", [2, 2, 2, 2], [64, 128, 256, 512], spatial_dims=2, n_input_channels=3, num_classes=3)
    torch.save(net.state_dict(), tmp_path / "resnet18.pt")
    loaded = SliceFeatures(tmp_path / "resnet18.pt", size=32)
    fallback = SliceFeatures(size=32)
    x = _disks(4, 0.3, 0)
    assert str(tmp_path / "resnet18.pt") in loaded.source
    assert not torch.allclose(loaded(x), fallback(x))
    (tmp_path / "broken.pt").write_bytes(b"\x00\x01garbage")
    with pytest.raises(LdmonaiError, match="broken.pt: cannot read feature extractor weights"):
        SliceFeatures(tmp_path / "broken.pt")


class _PoolFeatures(torch.nn.Module):
    """Stands in for the clean-fid Inception export: RGB in [0, 255], ``return_features``."""

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        assert x.shape[1] == 3 and x.shape[-1] == 40 and float(x.max()) > 200.0
        pooled = torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)
        return pooled if return_features else pooled.sum(1, keepdim=True)


def test_a_torchscript_feature_network_is_used_as_given(tmp_path):
    torch.jit.script(_PoolFeatures()).save(str(tmp_path / "inception.pt"))
    features = SliceFeatures(tmp_path / "inception.pt", script_size=40)
    assert features.source.startswith("TorchScript features from")
    x = _disks(4, 0.3, 0)
    assert features(x).shape == (4, 3 * 16)  # the return_features branch: pooled features, not the logit
    real = _disks(24, 0.4, 0)
    near = generative_metrics(_disks(24, 0.4, 1), real, features)
    far = generative_metrics(_disks(24, 0.15, 2), real, features)
    assert near["fid"] < far["fid"] and "TorchScript" in near["features"]


def test_classifier_auc_train_on_synthetic_test_on_real():
    """Small disks against large disks: a classifier trained on a set that carries the class
    transfers to fresh slices; one trained on slices whose labels do not follow the class does not."""
    from ldmonai.metrics.classifier_auc import classifier_auc

    train = torch.cat([_disks(32, 0.2, 10), _disks(32, 0.45, 11)]).clamp(0, 1)
    test = torch.cat([_disks(16, 0.2, 12), _disks(16, 0.45, 13)]).clamp(0, 1)
    labels, test_labels = ["cn"] * 32 + ["ad"] * 32, ["cn"] * 16 + ["ad"] * 16
    good = classifier_auc(train, labels, test, test_labels, epochs=6)
    uninformative = classifier_auc(train, ["cn", "ad"] * 32, test, test_labels, epochs=6)
    # measured at 6 epochs: 0.975 with class-carrying slices, 0.137 with uninformative labels
    print(f"AUC {good['auc']:.3f} with class-carrying slices, {uninformative['auc']:.3f} without")
    assert good["auc"] > 0.9 and good["positive"] == "cn" and good["num_test"] == 32
    assert uninformative["auc"] < 0.8
    with pytest.raises(LdmonaiError, match="only the class"):
        classifier_auc(train, labels, test[:16], test_labels[:16])
    with pytest.raises(LdmonaiError, match="exactly two classes"):
        classifier_auc(train, ["a", "b", "c", "d"] * 16, test, test_labels)


def test_evaluation_reports_the_classifier_auc(tmp_path):
    """The evaluate run's wiring: slices generated per class of the training prompts, tested on the
    real slices of the split."""
    import json

    from PIL import Image

    from ldmonai.ld.pipeline import evaluate_generation
    from test_ld_model import tiny_model

    entries = {"training": [], "validation": []}
    for split, seed in (("training", 20), ("validation", 21)):
        for dx, radius in (("cn", 0.2), ("ad", 0.45)):
            for i, disk in enumerate(_disks(4, radius, seed + len(entries[split])).clamp(0, 1)[:, 0, 8:24, 8:24]):
                path = tmp_path / f"{split}_{dx}_{i}.png"
                Image.fromarray((disk.numpy() * 255).astype("uint8")).save(path)
                entries[split].append({"image": str(path), "prompt": f"a brain mri of a {dx} brain", "diagnosis": dx})
    (tmp_path / "datalist.json").write_text(json.dumps(entries))
    metrics = evaluate_generation(tiny_model(), tmp_path / "datalist.json", tmp_path / "eval", (8, 8), split="validation",
                                  num_samples=8, num_inference_steps=3, class_key="diagnosis", classifier_epochs=2)
    assert 0 <= metrics["classifier"]["auc"] <= 1 and metrics["classifier"]["num_train"] == 16
    assert metrics["classifier"]["num_test"] == 8
    with pytest.raises(LdmonaiError, match="has no 'sex'"):
        evaluate_generation(tiny_model(), tmp_path / "datalist.json", tmp_path / "eval", (8, 8), split="validation",
                            num_samples=4, num_inference_steps=2, class_key="sex")


def test_lpips_from_a_local_torchscript_file(tmp_path):
    from ldmonai.metrics.perceptual import load_lpips, lpips_distance

    class FeatureDistance(torch.nn.Module):  # LPIPS's form: features of both inputs, squared difference, mean
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x, y):
            return (self.conv(x) - self.conv(y)).pow(2).mean((1, 2, 3), keepdim=True)

    torch.jit.script(FeatureDistance()).save(str(tmp_path / "lpips.pt"))
    net = load_lpips(tmp_path / "lpips.pt")
    a = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    assert float(lpips_distance(net, a, a).abs().max()) == 0.0
    d = lpips_distance(net, a, a.flip(-1))
    assert d.shape == (3,) and bool((d > 0).all())
    (tmp_path / "bad.pt").write_bytes(b"not a model")
    with pytest.raises(LdmonaiError, match="not a TorchScript LPIPS network"):
        load_lpips(tmp_path / "bad.pt")
    with pytest.raises(LdmonaiError, match="no LPIPS file"):
        load_lpips(tmp_path / "missing.pt")
