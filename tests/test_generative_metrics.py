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
