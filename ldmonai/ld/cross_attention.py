"""Cross-attention maps of a text-conditioned UNet, with gradients (for Pix2Pix-Zero's guidance).

MONAI's ``CrossAttentionBlock`` can keep its attention matrix (``save_attn``), but only a
detached copy, and Pix2Pix-Zero needs the gradient of a map distance with respect to the
noisy latent. A forward hook on each block recomputes the probabilities from the block's own
query and key projections, so nothing in MONAI is patched and the recorder can be removed
without a trace.
"""

from __future__ import annotations

import torch
from monai.networks.blocks.crossattention import CrossAttentionBlock
from torch import nn

__all__ = ["CrossAttentionMaps", "attention_distance"]


class CrossAttentionMaps:
    """Context manager that records ``{block name: (B, heads, HW, L)}`` attention probabilities.

    Each forward pass of the UNet inside the ``with`` overwrites ``maps``: one UNet call, one
    set of maps. Only blocks that attend to a context (the ``attn2`` of MONAI's transformer
    blocks) are recorded; self-attention is not.

    Args:
        unet: a MONAI ``DiffusionModelUNet`` built with ``with_conditioning=True``.
    """

    def __init__(self, unet: nn.Module) -> None:
        self.blocks = {n: m for n, m in unet.named_modules() if isinstance(m, CrossAttentionBlock)}
        self.maps: dict[str, torch.Tensor] = {}
        self._handles: list = []

    def __bool__(self) -> bool:
        return bool(self.blocks)

    def _hook(self, name: str):
        def record(module: CrossAttentionBlock, args, kwargs, output):
            x = args[0]
            context = kwargs.get("context", args[1] if len(args) > 1 else None)
            if context is None:
                return
            q = module.input_rearrange(module.to_q(x))
            k = module.input_rearrange(module.to_k(context))
            self.maps[name] = (torch.einsum("blxd,blyd->blxy", q, k) * module.scale).softmax(dim=-1)

        return record

    def __enter__(self) -> "CrossAttentionMaps":
        self.maps = {}
        self._handles = [m.register_forward_hook(self._hook(n), with_kwargs=True) for n, m in self.blocks.items()]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def attention_distance(maps: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> torch.Tensor:
    """Σ over blocks of ‖A − A_ref‖², summed over query positions and tokens, averaged over
    batch and heads (Pix2Pix-Zero's cross-attention loss)."""
    total = torch.zeros(())
    for name, ref in reference.items():
        total = total + (maps[name] - ref.to(maps[name])).pow(2).sum((-2, -1)).mean()
    return total
