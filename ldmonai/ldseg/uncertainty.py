"""Uncertainty maps from several segmentation samples of the same image.

LDSeg draws N label latents from different noise for one image; their spread is the
model's uncertainty. Entropy of the mean probability captures both ambiguity and
disagreement; the variance across samples captures disagreement alone.
"""

from __future__ import annotations

import torch

#: Channel order of :func:`stack_maps`: class probabilities, then these two maps.
MAP_NAMES = ("entropy", "variance")


def uncertainty_maps(probs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Summarise ``(N, B, C, *S)`` per-sample class probabilities.

    Returns:
        ``prob``: ``(B, C, *S)`` mean probability over the N samples;
        ``seg``: ``(B, 1, *S)`` argmax of ``prob`` (integer class ids);
        ``entropy``: ``(B, 1, *S)`` predictive entropy of ``prob`` in nats, in ``[0, log C]``;
        ``variance``: ``(B, 1, *S)`` variance across samples, averaged over classes.
    """
    if probs.ndim < 4:
        raise ValueError(f"expected (N, B, C, *S) probabilities, got shape {tuple(probs.shape)}")
    mean = probs.mean(0)
    entropy = -(mean * torch.log(mean.clamp_min(1e-12))).sum(1, keepdim=True)
    variance = probs.var(0, unbiased=False).mean(1, keepdim=True)
    return {"prob": mean, "seg": mean.argmax(1, keepdim=True), "entropy": entropy, "variance": variance}


def stack_maps(maps: dict[str, torch.Tensor]) -> torch.Tensor:
    """``(B, C + 2, *S)``: mean probability, entropy, variance in one tensor.

    Inferers and sliding windows pass one tensor through; :class:`~ldmonai.ldseg.transforms.SplitUncertaintyd`
    takes it apart again.
    """
    return torch.cat([maps["prob"], *(maps[name] for name in MAP_NAMES)], dim=1)
