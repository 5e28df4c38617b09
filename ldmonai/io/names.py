"""Image file names: which suffixes are images, and a name's stem without them.

Inference decides a case is finished by looking for ``<stem>_seg.nii.gz``, and previews are
named ``<stem>_preview.png``; both must strip ``.nii.gz`` as one suffix, so they share this.
"""

from __future__ import annotations

import os
from pathlib import Path

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff")


def image_stem(path: str | os.PathLike) -> str:
    """File name without its image suffix (``.nii.gz`` counts as one)."""
    name = Path(path).name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem
