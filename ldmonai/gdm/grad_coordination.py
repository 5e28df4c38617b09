"""Gradient coordination between the drift and fidelity objectives, in the output space.

The drift loss pulls the generator's output toward the distribution of real CT; the
fidelity loss pulls it toward this patient's CT. Both gradients live on the same tensor
(the generated volume), so their conflict can be measured there, voxel for voxel, and
resolved once before a single backward pass through the generator, which is much cheaper
than PCGrad on parameter gradients (Yu et al., 2020) and needs one network backward.
"""

from __future__ import annotations

import torch

__all__ = ["coordinate_gradients"]

_MODES = ("project_drift", "project_fidelity", "symmetric")


def _project(g: torch.Tensor, onto: torch.Tensor, dot: torch.Tensor, eps: float) -> torch.Tensor:
    # remove g's component along `onto` where the two conflict
    norm2 = onto.pow(2).sum(dim=1, keepdim=True).clamp_min(eps)
    return g - torch.where(dot < 0, dot / norm2, torch.zeros_like(dot)) * onto


def coordinate_gradients(
    g_fidelity: torch.Tensor, g_drift: torch.Tensor, mode: str = "project_drift", eps: float = 1e-20
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Combine two output-space gradients, projecting where they conflict (negative cosine).

    Args:
        g_fidelity: ``(B, ...)`` gradient of the fidelity loss w.r.t. the generator output.
        g_drift: ``(B, ...)`` gradient of the drift loss w.r.t. the same tensor.
        mode: ``project_drift`` (default) removes from the drift gradient its component
            against the fidelity gradient: fidelity to the paired CT is the clinical
            requirement and realism may not trade it away. ``project_fidelity`` does the
            reverse; ``symmetric`` projects each onto the other's normal plane (PCGrad).
        eps: floor of the squared norms.

    Each batch element is coordinated on its own: one patient's conflict is no reason to
    bend another's gradient.

    Returns:
        the combined gradient ``(B, ...)``, and a dict with the per-sample ``cosine`` before
        coordination and the ``conflict`` fraction of the batch (for logs).
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if g_fidelity.shape != g_drift.shape:
        raise ValueError(f"gradients differ in shape: {tuple(g_fidelity.shape)} and {tuple(g_drift.shape)}")
    b = g_fidelity.shape[0]
    f, d = g_fidelity.reshape(b, -1), g_drift.reshape(b, -1)
    dot = (f * d).sum(dim=1, keepdim=True)
    cosine = dot / (f.norm(dim=1, keepdim=True) * d.norm(dim=1, keepdim=True)).clamp_min(eps**0.5)
    if mode == "project_drift":
        d_new, f_new = _project(d, f, dot, eps), f
    elif mode == "project_fidelity":
        d_new, f_new = d, _project(f, d, dot, eps)
    else:
        d_new, f_new = _project(d, f, dot, eps), _project(f, d, dot, eps)
    combined = (f_new + d_new).reshape(g_fidelity.shape)
    return combined, {"cosine": cosine.squeeze(1), "conflict": (dot < 0).float().mean()}
