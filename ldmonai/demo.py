"""The main job on embedded sample data: ``ldmonai demo`` / ``make demo``.

The sample DICOM comes from wheels that pip installs anyway: pydicom's DICOMDIR tree (CT, MR
and CR series with suffix-less file names) and compressed MR, and nibabel's Siemens DTI
mosaic. They are copied (never modified) into ``demo_out/sample_dicom``, converted, and
preprocessed (RAS, 1 mm, z-score, axial slices). The LDSeg bundle then trains its tiny
preset on MNI152 tissue samples and segments held-out cases with uncertainty maps, and the
GDM bundle trains its tiny preset on MR/CT head phantoms and synthesises CT for held-out
cases. ``demo_out/overview.png`` puts the results side by side.
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


def _bundle_configs(name: str) -> Path | None:
    configs = Path(__file__).resolve().parents[1] / "bundles" / name / "configs"
    if not configs.is_dir():
        print(f"{name} demo skipped: bundle configs not found at {configs} (run from a source checkout)")
        return None
    return configs


def _run_bundle_steps(label: str, root: Path, steps: list[tuple[str, list[str]]]) -> int:
    """Each step through ``python -m monai.bundle run`` exactly as a user would; re-running resumes."""
    import subprocess
    import sys

    base = [sys.executable, "-m", "monai.bundle", "run", "--bundle_root", str(root)]
    for what, args in steps:
        print(f"{label}: {what} ...", flush=True)
        proc = subprocess.run(base + args, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-2000:])
            return 1
    return 0


def run_ldseg_demo(out: Path) -> int:
    """Train the tiny 2D LDSeg bundle on MNI152 tissue samples, then segment the test cases."""
    from ldmonai.data import make_tissue_dataset

    configs = _bundle_configs("ldseg")
    if configs is None:
        return 0
    root = out / "ldseg"
    datalist = make_tissue_dataset(root / "data", 2, num_train=24, num_val=6, num_test=2, size=64, seed=0)
    status = _run_bundle_steps("LDSeg", root, [
        ("training tiny LDSeg (2D, 100 epochs, about a minute on 2 cores)",
         ["--config_file", str(configs / "train.json"), "--dataset_dir", str(root / "data"), "--epochs", "100",
          "--val_interval", "50"]),
        ("segmenting the test cases with 8 samples each",
         ["--config_file", str(configs / "inference.json"), "--input", str(datalist), "--output_dir", str(root / "inference")]),
    ])
    if status == 0:
        print(f"LDSeg weights: {root / 'models' / 'model.pt'}\nTensorBoard: tensorboard --logdir {root / 'runs'}\n"
              f"Segmentations, uncertainty maps and PNG previews: {root / 'inference'}")
    return status


def run_gdm_demo(out: Path) -> int:
    """Train the tiny GDM bundle on MR/CT head phantoms, then synthesise CT for the test cases."""
    from ldmonai.data import make_mr_ct_phantoms, synthrad_datalist
    from ldmonai.io.atomic import atomic_write_json

    configs = _bundle_configs("gdm")
    if configs is None:
        return 0
    root = out / "gdm"
    if not (root / "data" / "Task1").is_dir():
        make_mr_ct_phantoms(root / "data", num_cases=10, size=48, seed=0)
    # One datalist for both runs, so that inference sees only the cases training held out.
    data = root / "data" / "datalist.json"
    atomic_write_json(data, synthrad_datalist(root / "data", val_fraction=0.2, test_fraction=0.2))
    status = _run_bundle_steps("GDM", root, [
        ("training tiny GDM on MR/CT head phantoms (40 epochs, about a minute on 2 cores)",
         ["--config_file", str(configs / "train.json"), "--dataset_dir", str(data), "--epochs", "40",
          "--val_interval", "20"]),
        ("synthesising CT for the test cases (one network evaluation per window)",
         ["--config_file", str(configs / "inference.json"), "--input", str(data), "--output_dir", str(root / "inference")]),
    ])
    if status == 0:
        print(f"GDM weights: {root / 'models' / 'model.pt'}\nTensorBoard: tensorboard --logdir {root / 'runs'}\n"
              f"Synthetic CT (HU, on the MR grid) and PNG previews: {root / 'inference'}\n"
              "The MR/CT pairs are phantoms made by ldmonai (MNI152-derived tissue classes), not patient data.")
    return status


PREP_STEPS = [
    {"step": "reorient"},
    {"step": "resample", "spacing": 1.0},
    {"step": "normalize"},
    {"step": "slices", "axis": "axial"},
]


def write_overview(out: Path, max_rows: int = 4) -> Path | None:
    """One PNG: a few preprocessed sample slices on top, then the LDSeg previews
    (image | segmentation | entropy | variance) and the GDM previews (MR | synthetic CT |
    CT), each row scaled to the same height."""
    import numpy as np
    from PIL import Image

    from ldmonai.io.preview import panel, save_png

    def load(path: Path, height: int = 128) -> np.ndarray:
        img = Image.open(path).convert("RGB")
        return np.asarray(img.resize((max(1, round(img.width * height / img.height)), height), Image.BILINEAR))

    # Four middle slices of the largest preprocessed sample volume (the wheels' DICOM samples
    # hold test patterns, not anatomy; the LDSeg rows show MNI152 brains).
    cases = [sorted(d.glob("*.png")) for d in (out / "prep").glob("*/slices")]
    slices = max(cases, key=len, default=[])
    lo, hi = len(slices) // 4, max(len(slices) // 4, 3 * len(slices) // 4 - 1)
    picks = [slices[i] for i in np.unique(np.linspace(lo, hi, 4).astype(int))] if slices else []
    rows = [panel([load(p) for p in picks])] if picks else []
    for family in ("ldseg", "gdm"):
        rows += [load(p) for p in sorted((out / family / "inference").glob("*_preview.png"))[:max_rows]]
    if not rows:
        return None
    width = max(r.shape[1] for r in rows)
    stacked = np.concatenate([np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0))) for r in rows], axis=0)
    path = out / "overview.png"
    save_png(path, stacked)
    return path


def run_demo(out_dir: str | Path = "demo_out") -> int:
    from ldmonai.prep.pipeline import run_pipeline

    out = Path(out_dir)
    samples = stage_samples(out / "sample_dicom")
    report = convert_tree(samples, out / "nifti", workers=2)
    print(report.summary())
    print(f"\nSample DICOM: {samples}\nNIfTI + BIDS JSON: {out / 'nifti'}\n"
          f"Report: {out / 'nifti' / 'conversion_report.json'}\n")
    prep = run_pipeline(PREP_STEPS, out / "nifti", out / "prep", workers=2)
    print(prep.summary())
    print(f"Preprocessed volumes and axial slices (PNG + NIfTI): {out / 'prep'}\n")
    status = max(run_ldseg_demo(out), run_gdm_demo(out))
    overview = write_overview(out)
    if overview:
        print(f"\nOverview: {overview}")
    return 0 if report.ok and not prep.failed and status == 0 else 1
