"""One intensity convention for CT in the GDM family: Hounsfield units <-> the unit range.

The SynthRAD2025 evaluation clips to [-1024, 3071] HU, so that range maps linearly onto
[-1, 1], the range in which the generator works. Metrics and fidelity are computed back in HU.
"""

from __future__ import annotations

import torch

HU_MIN, HU_MAX = -1024.0, 3071.0
__all__ = ["HU_MAX", "HU_MIN", "hu_to_unit", "unit_to_hu", "window"]


def hu_to_unit(hu):
    """HU -> [-1, 1] (linear; values outside the range map outside [-1, 1])."""
    return (hu - HU_MIN) / (HU_MAX - HU_MIN) * 2.0 - 1.0


def unit_to_hu(unit):
    """[-1, 1] -> HU."""
    return (unit + 1.0) * 0.5 * (HU_MAX - HU_MIN) + HU_MIN


def window(unit: torch.Tensor, lo_hu: float, hi_hu: float) -> torch.Tensor:
    """Unit-range CT -> [0, 1] over the HU window ``[lo_hu, hi_hu]``, clipped."""
    return ((unit_to_hu(unit) - lo_hu) / (hi_hu - lo_hu)).clamp(0.0, 1.0)
