"""Resampling to a model's voxel size, as one config switch that can also be off.

A model trained at 4 mm sees a 1 mm head as a brain four times too large, and samples 64
times more voxels than it needs to. ``OptionalSpacingd`` is MONAI's ``Spacingd`` when the
bundle's ``spacing`` is set, recorded in each tensor's ``applied_operations`` so that
``Invertd`` writes the outputs back on the input's own grid; with ``spacing`` null (the
default) it leaves the data on its grid and its inverse is a no-op, so the same
pre- and postprocessing serve both cases.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from monai.transforms import Spacingd


class OptionalSpacingd(Spacingd):
    """``Spacingd(keys, pixdim, mode)`` when ``pixdim`` is given; identity when it is None."""

    def __init__(self, keys, pixdim: Sequence[float] | float | None = None, **kwargs) -> None:
        self.enabled = pixdim is not None
        super().__init__(keys, pixdim=pixdim if self.enabled else 1.0, **kwargs)

    def __call__(self, data: Mapping, lazy: bool | None = None) -> dict:
        if not self.enabled:
            return dict(data)
        # For NIfTI inputs Spacingd updates every ``<key>_*`` entry in place as if it were a meta
        # dict; MONAI Label's requests carry strings there (``image_path``): keep such entries out of
        # its way and put them back afterwards.
        d = dict(data)
        prefixes = tuple(f"{k}_" for k in self.keys)
        aside = {k: d.pop(k) for k in list(d) if isinstance(k, str) and k.startswith(prefixes) and not isinstance(d[k], dict)}
        out = super().__call__(d, lazy=lazy)
        out.update(aside)
        return out

    def inverse(self, data: Mapping) -> dict:
        return super().inverse(data) if self.enabled else dict(data)
