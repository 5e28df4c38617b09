"""LPIPS between a source slice and its counterfactual, from a local TorchScript file.

LPIPS (Zhang et al., 2018) needs an ImageNet backbone and learned linear heads. The ``lpips``
package builds them through torchvision and downloads the weights, neither of which this
toolkit can rely on. A TorchScript export carries backbone and heads in one local file and
loads without either; make it once on any machine that has the package:

    import lpips, torch
    net = lpips.LPIPS(net="alex").eval()
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    torch.jit.trace(net, (x, x)).save("lpips_alex.pt")

Without such a file the metric is reported as not computed, with the reason.
"""

from __future__ import annotations

import os

import torch

from ldmonai.errors import LdmonaiError, first_line

__all__ = ["load_lpips", "lpips_distance"]


def load_lpips(path: str | os.PathLike) -> torch.jit.ScriptModule:
    """The TorchScript LPIPS network ``f(x, y) -> (N, 1, 1, 1)`` at ``path`` (RGB in [-1, 1])."""
    fix = "export one with torch.jit.trace(lpips.LPIPS(net='alex'), (x, x)).save(path); see ldmonai.metrics.perceptual"
    if not os.path.isfile(path):
        raise LdmonaiError("no LPIPS file", path, fix)
    try:
        return torch.jit.load(str(path), map_location="cpu").eval()
    except (RuntimeError, ValueError) as err:
        raise LdmonaiError(f"not a TorchScript LPIPS network ({first_line(err)})", path, fix) from None


@torch.no_grad()
def lpips_distance(net: torch.nn.Module, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(N,)`` LPIPS between slices ``a`` and ``b`` ``(N, 1 or 3, H, W)`` in [0, 1]."""
    def rgb(x: torch.Tensor) -> torch.Tensor:
        x = x.float() * 2 - 1
        return x.expand(-1, 3, *x.shape[2:]) if x.shape[1] == 1 else x

    return net(rgb(a), rgb(b)).reshape(a.shape[0], -1).mean(1)
