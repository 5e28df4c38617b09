"""MONAI image writers that write atomically, for ``SaveImaged(writer=...)``.

MONAI's writers save straight to the final name; a killed inference would leave a
truncated NIfTI that a resumed run takes for finished work. These subclasses write to a
temporary beside it and rename.
"""

from __future__ import annotations

from monai.data import ITKWriter, NibabelWriter

from ldmonai.io.atomic import atomic_path


class AtomicNibabelWriter(NibabelWriter):
    """``NibabelWriter`` (NIfTI) with temp-then-rename saving."""

    def write(self, filename, verbose: bool = False, **obj_kwargs):
        with atomic_path(filename) as tmp:
            super().write(tmp, verbose=verbose, **obj_kwargs)


class AtomicITKWriter(ITKWriter):
    """``ITKWriter`` (NRRD, MHA, NIfTI through ITK) with temp-then-rename saving."""

    def write(self, filename, verbose: bool = False, **kwargs):
        with atomic_path(filename) as tmp:
            super().write(tmp, verbose=verbose, **kwargs)
