"""Distribution metrics between generated and real slices: FID (MONAI) and KID, on pluggable features.

The features come from :class:`SliceFeatures`:

- a TorchScript feature network from a local path, for Inception FID comparable with published
  figures. The StyleGAN/clean-fid Inception export (``inception-2015-12-05.pt``, 2048-d pool
  features, RGB in [0, 255], ``return_features=True``) works as it is; any scripted network that
  maps ``(B, 3, H, W)`` to ``(B, F)`` does too;
- a 2D MONAI ResNet with weights from a local path (for example RadImageNet or ImageNet ResNet
  weights converted to a state dict), read with ``weights_only``;
- otherwise, the documented offline fallback: the same network with a fixed random
  initialisation. Random-feature FID/KID rank distributions consistently within one study,
  but their values are not comparable with published Inception figures. Every result says
  which features it used.
"""

from __future__ import annotations

import os
import zipfile

import torch
import torch.nn.functional as F
from monai.metrics import FIDMetric
from monai.networks.nets import ResNet
from torch import nn

from ldmonai.errors import LdmonaiError, first_line

__all__ = ["SliceFeatures", "kid", "generative_metrics"]


class SliceFeatures(nn.Module):
    """``(B, C, H, W)`` slices -> ``(B, F)`` pooled features of a frozen 2D ResNet.

    Args:
        weights: a TorchScript feature network, or a state dict for MONAI's ``ResNet``
            (``block``, ``layers`` as given); ``None`` uses the seeded random fallback.
        block, layers: the ResNet (``basic``, ``(2, 2, 2, 2)`` is ResNet-18).
        size: slices are resized to ``size x size`` (``script_size`` for a TorchScript network)
            and repeated to 3 channels, each scaled to [0, 1] (``script_range`` for TorchScript).
        seed: the fallback's initialisation.
    """

    def __init__(self, weights: str | os.PathLike | None = None, block: str = "basic",
                 layers: tuple[int, ...] = (2, 2, 2, 2), size: int = 128, seed: int = 0,
                 script_size: int = 299, script_range: tuple[float, float] = (0.0, 255.0)) -> None:
        super().__init__()
        self.scale = (0.0, 1.0)
        self.script: torch.jit.ScriptModule | None = None
        if weights is not None and _is_torchscript(weights):
            try:
                self.script = torch.jit.load(str(weights), map_location="cpu").eval()
            except (RuntimeError, ValueError) as err:
                raise LdmonaiError(f"cannot load the TorchScript feature network ({first_line(err)})", weights,
                                   "pass a file written by torch.jit.save") from None
            args = [a.name for a in self.script.forward.schema.arguments]
            self.script_kwargs = {"return_features": True} if "return_features" in args else {}
            self.source = f"TorchScript features from {weights}"
            self.size, self.scale = script_size, script_range
            self.requires_grad_(False)
            return
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.net = ResNet(block, list(layers), [64, 128, 256, 512], spatial_dims=2, n_input_channels=3,
                              num_classes=1, feed_forward=False)
        self.source = "random ResNet features (offline fallback, seed %d)" % seed
        if weights is not None:
            from ldmonai.engines.checkpoint import load_state_dict

            state = load_state_dict(weights, "feature extractor weights")
            missing, _ = self.net.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")},
                                                           strict=False)
            if [k for k in missing if not k.startswith("fc.")]:
                raise LdmonaiError(f"the weights miss {len(missing)} ResNet parameters", weights,
                                   "pass weights of the same block and layers")
            self.source = f"ResNet features from {weights}"
        self.size = size
        self.requires_grad_(False).eval()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if x.ndim != 4:
            raise LdmonaiError(f"expected (B, C, H, W) slices, got shape {tuple(x.shape)}", None, "pass 2D slices")
        x = x.mean(1, keepdim=True) if x.shape[1] != 1 else x
        lo = x.amin(dim=(2, 3), keepdim=True)
        hi = x.amax(dim=(2, 3), keepdim=True)
        x = (x - lo) / (hi - lo).clamp_min(1e-6) * (self.scale[1] - self.scale[0]) + self.scale[0]
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
        if self.script is not None:
            feats = self.script(x, **self.script_kwargs)
            if not isinstance(feats, torch.Tensor) or feats.shape[0] != x.shape[0]:
                raise LdmonaiError("the TorchScript feature network did not return one feature row per slice", None,
                                   "pass a network that maps (B, 3, H, W) to (B, F)")
            return feats.flatten(1).float()
        return self.net(x).flatten(1)


def _is_torchscript(path: str | os.PathLike) -> bool:
    """TorchScript archives carry their code; ``torch.save`` state dicts carry only data."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def kid(fake: torch.Tensor, real: torch.Tensor, subsets: int = 50, subset_size: int = 100, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance: the unbiased MMD² with the cubic polynomial kernel
    k(x, y) = (x·y / d + 1)^3, averaged over random subsets; returns (mean, std).

    Args:
        fake, real: ``(N, d)`` and ``(M, d)`` features; ``subset_size`` is capped by the smaller set.
    """
    if fake.ndim != 2 or real.ndim != 2 or fake.shape[1] != real.shape[1]:
        raise LdmonaiError(f"feature shapes {tuple(fake.shape)} and {tuple(real.shape)} do not match", None,
                           "extract both with the same extractor")
    m = min(subset_size, fake.shape[0], real.shape[0])
    if m < 2:
        raise LdmonaiError("KID needs at least 2 samples on each side", None, "generate and load more slices")
    x, y = fake.double(), real.double()
    d = x.shape[1]
    g = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        a = x[torch.randperm(x.shape[0], generator=g)[:m]]
        b = y[torch.randperm(y.shape[0], generator=g)[:m]]
        kxx, kyy, kxy = (a @ a.T / d + 1) ** 3, (b @ b.T / d + 1) ** 3, (a @ b.T / d + 1) ** 3
        off = 1 - torch.eye(m, dtype=kxx.dtype)
        mmd = (kxx * off).sum() / (m * (m - 1)) + (kyy * off).sum() / (m * (m - 1)) - 2 * kxy.mean()
        values.append(float(mmd))
    t = torch.tensor(values)
    return float(t.mean()), float(t.std()) if len(values) > 1 else 0.0


def generative_metrics(fake: torch.Tensor, real: torch.Tensor, features: SliceFeatures | None = None,
                       batch_size: int = 32) -> dict:
    """FID (``monai.metrics.FIDMetric``) and KID between generated and real slices ``(N, C, H, W)``."""
    features = features or SliceFeatures()

    def embed(images):
        return torch.cat([features(images[i : i + batch_size]) for i in range(0, images.shape[0], batch_size)])

    f, r = embed(fake), embed(real)
    kid_mean, kid_std = kid(f, r)
    return {"fid": float(FIDMetric()(f, r)), "kid": kid_mean, "kid_std": kid_std, "features": features.source,
            "num_fake": int(fake.shape[0]), "num_real": int(real.shape[0])}
