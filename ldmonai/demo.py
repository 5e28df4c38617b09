"""The main job on embedded sample data: ``ldmonai demo`` / ``make demo``.

The sample DICOM comes from wheels that pip installs anyway: pydicom's DICOMDIR tree (CT, MR
and CR series with suffix-less file names) and compressed MR, and nibabel's Siemens DTI
mosaic. They are copied (never modified) into ``demo_out/sample_dicom`` and converted.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ldmonai.prep.dicom import convert_tree


def sample_sources() -> list[tuple[Path, str]]:
    import nibabel
    import pydicom.data

    pyd = Path(pydicom.data.__file__).parent / "test_files"
    nib = Path(nibabel.__file__).parent / "nicom" / "tests" / "data"
    return [
        (pyd / "dicomdirtests", "dicomdir_tree"),
        (pyd / "MR_small_jp2klossless.dcm", "compressed/jpeg2000/IM0001"),
        (pyd / "CT_small.dcm", "ct/IM0001"),
        (nib / "0.dcm", "siemens_mosaic/IM0001"),
    ]


def stage_samples(dest: Path) -> Path:
    """Copy the sample files into ``dest`` (idempotent) and return it."""
    for src, rel in sample_sources():
        target = dest / rel
        if target.exists():
            continue
        if src.is_dir():
            shutil.copytree(src, target)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    return dest


def run_demo(out_dir: str | Path = "demo_out") -> int:
    out = Path(out_dir)
    samples = stage_samples(out / "sample_dicom")
    report = convert_tree(samples, out / "nifti", workers=2)
    print(report.summary())
    print(f"\nSample DICOM: {samples}\nNIfTI + BIDS JSON: {out / 'nifti'}\n"
          f"Report: {out / 'nifti' / 'conversion_report.json'}")
    return 0 if report.ok else 1
