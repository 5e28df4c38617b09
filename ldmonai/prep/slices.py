"""2D slices of registered, stripped volumes for the LD slice generator, with subject metadata.

Each kept slice is written twice: as an 8-bit PNG (what 2D diffusion fine-tuning reads) and
as a one-slice NIfTI that keeps the slice's position in the volume, so it still overlays on
the 3D scan in Slicer. One index row per slice carries the subject's metadata from a
participants table (BIDS ``participants.tsv`` or any CSV with a subject column), so that
prompts such as "a T1 brain MRI of a 77 year old woman with MCI" can be built from it.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ldmonai.errors import LdmonaiError
from ldmonai.io.preview import save_png
from ldmonai.prep.image import require_dims, require_same_space, write_image
from ldmonai.prep.resample import reorient

# Axis names in RAS space: the axis that an axial slice is perpendicular to, and so on.
AXES = {"sagittal": 0, "coronal": 1, "axial": 2}
SUBJECT_COLUMNS = ("participant_id", "subject_id", "subject", "id")
_SUBJECT_RE = re.compile(r"(sub-[A-Za-z0-9]+)")
_SESSION_RE = re.compile(r"(ses-[A-Za-z0-9]+)")


def subject_of(name: str) -> str:
    """The subject id a file belongs to: its BIDS ``sub-XX`` entity, else the whole stem."""
    match = _SUBJECT_RE.search(name)
    return match.group(1) if match else name


def visit_of(name: str) -> str | None:
    """The BIDS ``ses-XX`` entity of a file name, if any."""
    match = _SESSION_RE.search(name)
    return match.group(1) if match else None


def load_participants(path: str | os.PathLike) -> dict[str, dict]:
    """Rows of a participants table keyed by subject id (``sub-01`` and ``01`` both match).

    Accepts BIDS ``participants.tsv`` (tab-separated, ``participant_id`` column) or CSV with
    any of the columns ``participant_id``, ``subject_id``, ``subject`` or ``id``.
    """
    path = Path(path)
    if not path.is_file():
        raise LdmonaiError("participants table not found", path, "pass a BIDS participants.tsv or a CSV")
    text = path.read_text(encoding="utf-8-sig")
    delimiter = "\t" if path.suffix.lower() == ".tsv" or "\t" in text.splitlines()[0] else ","
    rows = list(csv.DictReader(text.splitlines(), delimiter=delimiter))
    if not rows:
        raise LdmonaiError("participants table has no rows", path, "add one row per subject")
    column = next((c for c in SUBJECT_COLUMNS if c in rows[0]), None)
    if column is None:
        raise LdmonaiError(f"participants table has none of the columns {', '.join(SUBJECT_COLUMNS)}", path,
                           "name the subject column participant_id (BIDS)")
    table = {}
    for row in rows:
        key = str(row[column]).strip()
        clean = {k: (v.strip() if isinstance(v, str) else v) for k, v in row.items() if k != column}
        table[key] = clean
        table[key[4:] if key.startswith("sub-") else f"sub-{key}"] = clean
    return table


@dataclass
class SliceExtractor:
    """Cut a volume into 2D slices.

    Args:
        axis: ``axial``, ``coronal`` or ``sagittal`` (in RAS space; the volume is reoriented first).
        every: keep every n-th slice.
        min_foreground: keep a slice only if at least this fraction of it is inside the mask
            (or non-zero, without a mask): drops the empty slices above and below the head.
        range_fraction: keep slices between these fractions of the foreground's extent along ``axis``.
        low_percentile / high_percentile: PNG grey levels map these percentiles of the whole
            foreground to 0 and 255, one mapping per volume so slices of one scan compare.
        formats: any of ``png`` and ``nifti``.
    """

    axis: str = "axial"
    every: int = 1
    min_foreground: float = 0.05
    range_fraction: tuple = (0.0, 1.0)
    low_percentile: float = 0.5
    high_percentile: float = 99.5
    formats: tuple = ("png", "nifti")

    def __post_init__(self):
        if self.axis not in AXES:
            raise LdmonaiError(f"unknown slice axis {self.axis!r}", fix=f"use one of {', '.join(AXES)}")
        bad = set(self.formats) - {"png", "nifti"}
        if bad or not self.formats:
            raise LdmonaiError(f"unknown slice formats {sorted(bad)}", fix="use png and/or nifti")
        if self.every < 1:
            raise LdmonaiError(f"'every' must be at least 1, got {self.every}")

    def __call__(self, image: sitk.Image, out_dir: str | os.PathLike, case_id: str,
                 mask: sitk.Image | None = None) -> list[dict]:
        """Write the slices of ``image`` into ``out_dir`` and return one index row per slice."""
        require_dims(image, 3, "slices", case_id)
        if mask is not None:
            require_same_space(image, mask, case_id, "slice mask")
        volume = reorient(image, "RAS")
        mask = reorient(mask, "RAS") if mask is not None else None
        array = sitk.GetArrayFromImage(volume).transpose()  # (R, A, S) index order
        fg = (sitk.GetArrayFromImage(mask).transpose() > 0) if mask is not None else (array != 0)
        if not fg.any():
            raise LdmonaiError("volume has no foreground to slice (all zero or empty mask)", case_id,
                               "check the skull-strip step or drop min_foreground")
        lo, hi = np.percentile(array[fg], [self.low_percentile, self.high_percentile])
        axis = AXES[self.axis]
        other = tuple(a for a in range(3) if a != axis)
        fraction = fg.mean(axis=other)
        present = np.flatnonzero(fraction > 0)
        first, last = present[0], present[-1]
        start = first + int(np.floor(self.range_fraction[0] * (last - first)))
        stop = first + int(np.ceil(self.range_fraction[1] * (last - first)))
        out_dir = Path(out_dir)
        rows = []
        for k in range(start, stop + 1, self.every):
            if fraction[k] < self.min_foreground:
                continue
            index = [slice(None)] * 3
            index[axis] = k
            plane = array[tuple(index)]
            name = f"{case_id}_{self.axis}_{k:03d}"
            row = {"case": case_id, "axis": self.axis, "index": int(k), "foreground_fraction": round(float(fraction[k]), 4),
                   "position_mm": round(float(volume.TransformIndexToPhysicalPoint([int(k) if a == axis else 0 for a in range(3)])[axis]), 3)}
            if "png" in self.formats:
                grey = np.where(fg[tuple(index)], np.clip((plane - lo) / max(hi - lo, 1e-12), 0, 1), 0.0)
                # Top row is anterior (axial) or superior (coronal, sagittal); the patient's right is on
                # the image's right (neurological convention).
                png = out_dir / f"{name}.png"
                save_png(png, np.round(np.flipud(grey.T) * 255).astype(np.uint8), min_size=0)
                row["png"] = str(png)
            if "nifti" in self.formats:
                size = list(volume.GetSize())
                size[axis] = 1  # one slice thick, still 3D: it keeps its place in the volume
                corner = [0, 0, 0]
                corner[axis] = int(k)
                one = sitk.Extract(volume, size, corner)
                nifti = out_dir / f"{name}.nii.gz"
                write_image(one, nifti)
                row["nifti"] = str(nifti)
            rows.append(row)
        return rows
