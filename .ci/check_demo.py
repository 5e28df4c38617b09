"""Check that ``make demo`` left every stage's outputs (CI runs it right after the demo).

Usage: python .ci/check_demo.py demo_out
Exit status 1 names each missing output; 0 prints what was found.
"""

import sys
from pathlib import Path

EXPECTED = {
    "DICOM -> NIfTI": ("nifti", "*/*.nii.gz", 4),
    "conversion report": ("nifti", "conversion_report.json", 1),
    "preprocessing": ("prep", "*/*_image.nii.gz", 1),
    "skull-strip mask": ("prep", "*/*_mask.nii.gz", 1),
    "skull-strip figure": ("prep", "*/*_mask.png", 1),
    "LDSeg segmentations": ("ldseg/inference", "*_seg.nii.gz", 2),
    "LDSeg entropy maps": ("ldseg/inference", "*_entropy.nii.gz", 2),
    "GDM synthetic CT": ("gdm/inference", "*_sct.nii.gz", 2),
    "GDM sparse-view CT": ("gdm/svct", "*_svct.nii.gz", 2),
    "sparse-view FBP": ("gdm/svct", "*_fbp.nii.gz", 2),
    "sparse-view previews": ("gdm/svct", "*_preview.png", 2),
    "LD delta search": ("ld_slice_generator/delta_search", "delta_search.json", 1),
    "LD generated slices": ("ld_slice_generator/generated", "*.nii.gz", 2),
    "overview figure": (".", "overview.png", 1),
}


def main(out: Path) -> int:
    missing = []
    for what, (folder, pattern, least) in EXPECTED.items():
        found = sorted((out / folder).glob(pattern))
        print(f"{what:24s} {len(found):3d} x {out / folder / pattern}")
        if len(found) < least:
            missing.append(f"{what}: expected at least {least} x {out / folder / pattern}, found {len(found)}")
    for line in missing:
        print(f"check_demo: missing {line}", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "demo_out")))
