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


def source_name(data, key) -> str:
    """The file a loaded item came from (MONAI keeps it in the MetaTensor), else the key."""
    value = data.get(key)
    meta = getattr(value, "meta", None) or {}
    return str(meta.get("filename_or_obj", key))


# SynthRAD-style layouts name files by modality inside one folder per patient
# (``<patient>/mr.mha``); the patient is the case, not the file.
GENERIC_STEMS = frozenset({"mr", "ct", "cbct", "mask", "image", "label"})


def case_stem(path: str | os.PathLike) -> str:
    """The case name of an input: its stem, or its folder's name when the stem is a modality."""
    stem = image_stem(path)
    return Path(path).parent.name if stem.lower() in GENERIC_STEMS and Path(path).parent.name else stem


def case_name_formatter(metadict: dict | None, saver) -> dict:
    """``output_name_formatter`` for MONAI's ``SaveImage``: outputs named by :func:`case_stem`,
    so that ``HN/1HNA001/mr.mha`` gives ``1HNA001_sct.nii.gz``, not a ``mr_sct`` per patient."""
    from monai.data.folder_layout import default_name_formatter

    out = default_name_formatter(metadict, saver)
    source = (metadict or {}).get("filename_or_obj")
    if source:
        out["subject"] = case_stem(source)
    return out
