"""Cross-attention maps of a text-conditioned UNet, with gradients (for Pix2Pix-Zero's guidance).

Pix2Pix-Zero needs the gradient of a map distance with respect to the noisy latent, so the
maps must be recorded inside the graph, from the block's own query and key projections:

- MONAI's ``CrossAttentionBlock`` can keep its attention matrix (``save_attn``), but only a
  detached copy; a forward hook on each block recomputes the probabilities instead, so
  nothing in MONAI is patched;
- a diffusers UNet (the Stable Diffusion backend) is recorded through its own extension
  point, attention processors: each cross-attention module's processor is wrapped by one that
  computes the probabilities with the module's ``get_attention_scores`` and then calls the
  original processor, so the UNet's output is unchanged.

Either way the recorder leaves no trace once its ``with`` block ends.
"""

from __future__ import annotations

import torch
from monai.networks.blocks.crossattention import CrossAttentionBlock
from torch import nn

__all__ = ["CrossAttentionMaps", "attention_distance"]


class CrossAttentionMaps:
    """Context manager that records ``{block name: (B, heads, HW, L)}`` attention probabilities.

    Each forward pass of the UNet inside the ``with`` overwrites ``maps``: one UNet call, one
    set of maps. Only blocks that attend to a context (the ``attn2`` of the transformer blocks)
    are recorded; self-attention is not.

    Args:
        unet: a MONAI ``DiffusionModelUNet`` built with ``with_conditioning=True``, or a
            :class:`~ldmonai.ld.diffusers_backend.DiffusersUNet` around a diffusers
            ``UNet2DConditionModel``.
    """

    def __init__(self, unet: nn.Module) -> None:
        diffusers_unet = getattr(unet, "model", None)
        self._diffusers = diffusers_unet if hasattr(diffusers_unet, "set_attn_processor") else None
        if self._diffusers is not None:
            self.blocks = {n: m for n, m in self._diffusers.named_modules() if getattr(m, "is_cross_attention", False)}
        else:
            self.blocks = {n: m for n, m in unet.named_modules() if isinstance(m, CrossAttentionBlock)}
        self.maps: dict[str, torch.Tensor] = {}
        self._handles: list = []
        self._processors: dict | None = None

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
        if self._diffusers is not None:
            self._processors = dict(self._diffusers.attn_processors)
            wrapped = {key: _RecordingProcessor(proc, key[: -len(".processor")], self.maps)
                       if key[: -len(".processor")] in self.blocks else proc for key, proc in self._processors.items()}
            self._diffusers.set_attn_processor(wrapped)
        else:
            self._handles = [m.register_forward_hook(self._hook(n), with_kwargs=True) for n, m in self.blocks.items()]
        return self

    def __exit__(self, *exc) -> None:
        if self._processors is not None:
            self._diffusers.set_attn_processor(self._processors)
            self._processors = None
        for h in self._handles:
            h.remove()
        self._handles = []


class _RecordingProcessor:
    """A diffusers attention processor that records a cross-attention module's probabilities
    ``(B, heads, HW, L)`` (with gradients) and then runs the module's original processor."""

    def __init__(self, inner, name: str, maps: dict[str, torch.Tensor]) -> None:
        self.inner, self.name, self.maps = inner, name, maps

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, **kwargs):
        if encoder_hidden_states is not None:
            x = hidden_states.flatten(2).transpose(1, 2) if hidden_states.ndim == 4 else hidden_states
            if attn.group_norm is not None:
                x = attn.group_norm(x.transpose(1, 2)).transpose(1, 2)
            context = attn.norm_encoder_hidden_states(encoder_hidden_states) if attn.norm_cross else encoder_hidden_states
            q = attn.head_to_batch_dim(attn.to_q(x))
            k = attn.head_to_batch_dim(attn.to_k(context))
            probs = attn.get_attention_scores(q, k, None)  # (B * heads, HW, L), batch-major
            self.maps[self.name] = probs.reshape(x.shape[0], attn.heads, *probs.shape[1:])
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)


def attention_distance(maps: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> torch.Tensor:
    """Σ over blocks of ‖A − A_ref‖², summed over query positions and tokens, averaged over
    batch and heads (Pix2Pix-Zero's cross-attention loss)."""
    total = torch.zeros(())
    for name, ref in reference.items():
        total = total + (maps[name] - ref.to(maps[name])).pow(2).sum((-2, -1)).mean()
    return total
