"""The main job on embedded sample data: ``ldmonai demo`` / ``make demo``.

The sample DICOM comes from wheels that pip installs anyway: pydicom's DICOMDIR tree (CT, MR
and CR series with suffix-less file names) and compressed MR, and nibabel's Siemens DTI
mosaic. They are copied (never modified) into ``demo_out/sample_dicom``, converted, and
preprocessed (RAS, 1 mm, z-score, axial slices).

Then each model bundle runs its inference through ``python -m monai.bundle run``:

- LDSeg segments held-out MNI152 tissue samples with uncertainty maps;
- GDM synthesises CT for held-out MR/CT head phantoms;
- LD searches the latent drift δ against real MNI152 slices and generates slices at the δ found.

The weights are the bundles' ``tiny`` presets, trained by ``ldmonai demo --train`` with each
bundle's own train config and shipped as ``bundles/<name>/models/demo_tiny.pt`` (a few MB each,
with a manifest that records the sha256 and the exact training runs). ``--train`` retrains them
from scratch (about 9 minutes on 2 cores); ``--train --export-weights`` replaces the shipped
files. ``demo_out/overview.png`` puts the results side by side.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

from ldmonai.errors import LdmonaiError
from ldmonai.prep.dicom import convert_tree

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"
SHIPPED = "demo_tiny.pt"


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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def state_digest(path: Path) -> str:
    """sha256 over a state dict's keys and values: equal for equal weights, whatever the file's
    zip record names (``torch.save`` derives them from the file name, so two files holding the
    same tensors can differ byte for byte)."""
    import torch

    digest = hashlib.sha256()

    def feed(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key in sorted(value, key=str):
                feed(f"{prefix}.{key}", value[key])
        elif isinstance(value, torch.Tensor):
            digest.update(f"{prefix}:{value.dtype}:{tuple(value.shape)}".encode())
            digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            digest.update(f"{prefix}={value!r}".encode())

    feed("", torch.load(path, map_location="cpu", weights_only=True))
    return digest.hexdigest()


def shipped_weights(bundle: str) -> Path | None:
    """The bundle's shipped demo weights, checked against their manifest; None where none ship."""
    path = BUNDLES / bundle / "models" / SHIPPED
    manifest = path.with_suffix(".json")
    if not path.is_file() or not manifest.is_file():
        return None
    expected = json.loads(manifest.read_text())["sha256"]
    if _sha256(path) != expected:
        raise LdmonaiError(f"does not match the sha256 in {manifest.name} (a Git LFS pointer or a partial copy?)", path,
                           "run `ldmonai demo --train` to train the weights instead, or restore the file from git")
    return path


def _copy(src: Path, target: Path) -> None:
    from ldmonai.io.atomic import atomic_path

    with atomic_path(target) as tmp:
        shutil.copyfile(src, tmp)


class _Family:
    """One bundle in the demo: its data, its training runs and its inference runs, all through
    ``python -m monai.bundle run`` exactly as a user would type them."""

    def __init__(self, label: str, bundle: str, out: Path):
        self.label, self.bundle = label, bundle
        self.root = out / bundle
        self.configs = BUNDLES / bundle / "configs"

    def config(self, *names: str) -> str:
        paths = [str(self.configs / n) for n in names]
        return paths[0] if len(paths) == 1 else repr(paths)

    def run(self, steps: list[tuple[str, list]]) -> int:
        """Each step is a bundle run; a failing one prints its stderr tail and stops the family."""
        base = [sys.executable, "-m", "monai.bundle", "run", "--bundle_root", str(self.root)]
        for what, args in steps:
            print(f"{self.label}: {what} ...", flush=True)
            proc = subprocess.run(base + [str(a) for a in args], capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stderr[-2000:])
                return 1
        return 0

    def weights(self, train: bool, train_steps: list[tuple[str, list]]) -> int:
        """Train with the bundle's train config, or install the shipped tiny weights as models/model.pt."""
        try:
            shipped = shipped_weights(self.bundle)
        except LdmonaiError:
            if not train:
                raise
            shipped = None  # retraining needs no intact shipped file; there is just nothing to compare with
        if train or shipped is None:
            if shipped is None:
                print(f"{self.label}: no shipped weights under {BUNDLES / self.bundle / 'models'}; training them")
            status = self.run(train_steps)
            if status == 0 and shipped is not None:
                self.compare(shipped)
            return status
        target = self.root / "models" / "model.pt"
        if not target.is_file():
            _copy(shipped, target)
        print(f"{self.label}: shipped tiny weights {shipped} (`ldmonai demo --train` retrains them)", flush=True)
        return 0

    def compare(self, shipped: Path) -> bool:
        """Whether this run's weights equal the shipped ones, tensor for tensor; printed either way."""
        same = state_digest(self.root / "models" / "model.pt") == json.loads(shipped.with_suffix(".json").read_text())["state_sha256"]
        print(f"{self.label}: the trained weights are {'identical to' if same else 'not identical to'} the shipped "
              f"{shipped.name}" + ("" if same else " (other hardware, thread count or library versions change the "
                                                     "arithmetic; see the manifest for the ones used)"), flush=True)
        return same

    def export(self, train_steps: list[tuple[str, list]]) -> Path:
        """Replace the shipped weights with this run's models/model.pt, and write their manifest."""
        import monai
        import torch

        from ldmonai import __version__
        from ldmonai.io.atomic import atomic_write_json

        target = BUNDLES / self.bundle / "models" / SHIPPED
        _copy(self.root / "models" / "model.pt", target)
        relative = [[what, [str(a).replace(str(self.root), "<demo_out>/" + self.bundle).replace(str(BUNDLES), "bundles")
                            for a in args]] for what, args in train_steps]
        atomic_write_json(target.with_suffix(".json"), {
            "file": SHIPPED, "sha256": _sha256(target), "state_sha256": state_digest(target),
            "bytes": target.stat().st_size,
            "produced_by": "ldmonai demo --train --export-weights",
            "bundle_runs": relative,
            "versions": {"ldmonai": __version__, "torch": torch.__version__, "monai": monai.__version__},
            "threads": torch.get_num_threads(),
        })
        print(f"{self.label}: exported {target}")
        return target


def ldseg_demo(out: Path, train: bool = False, export: bool = False) -> int:
    """Tiny 2D LDSeg on MNI152 tissue samples: segment the test cases with 8 samples each."""
    from ldmonai.data import make_tissue_dataset

    fam = _Family("LDSeg", "ldseg", out)
    datalist = make_tissue_dataset(fam.root / "data", 2, num_train=24, num_val=6, num_test=2, size=64, seed=0)
    train_steps = [("training tiny LDSeg (2D, 100 epochs, about a minute on 2 cores)",
                    ["--config_file", fam.config("train.json"), "--dataset_dir", fam.root / "data", "--epochs", 100,
                     "--val_interval", 50])]
    status = fam.weights(train, train_steps) or fam.run([
        ("segmenting the test cases with 8 samples each",
         ["--config_file", fam.config("inference.json"), "--input", datalist, "--output_dir", fam.root / "inference"])])
    if status == 0:
        if export:
            fam.export(train_steps)
        print(f"LDSeg weights: {fam.root / 'models' / 'model.pt'}\n"
              f"Segmentations, uncertainty maps and PNG previews: {fam.root / 'inference'}")
    return status


def gdm_demo(out: Path, train: bool = False, export: bool = False) -> int:
    """Tiny GDM on MR/CT head phantoms: synthesise CT for the held-out cases, one network call each window."""
    from ldmonai.data import make_mr_ct_phantoms, synthrad_datalist
    from ldmonai.io.atomic import atomic_write_json

    fam = _Family("GDM", "gdm", out)
    if not (fam.root / "data" / "Task1").is_dir():
        make_mr_ct_phantoms(fam.root / "data", num_cases=10, size=48, seed=0)
    # One datalist for training and inference, so that inference sees only the cases training held out.
    data = fam.root / "data" / "datalist.json"
    atomic_write_json(data, synthrad_datalist(fam.root / "data", val_fraction=0.2, test_fraction=0.2))
    train_steps = [("training tiny GDM on MR/CT head phantoms (150 epochs, about 4 minutes on 2 cores)",
                    ["--config_file", fam.config("train.json"), "--dataset_dir", data, "--epochs", 150, "--val_interval", 25])]
    status = fam.weights(train, train_steps) or fam.run([
        ("synthesising CT for the test cases",
         ["--config_file", fam.config("inference.json"), "--input", data, "--output_dir", fam.root / "inference"])])
    if status == 0:
        if export:
            fam.export(train_steps)
        print(f"GDM weights: {fam.root / 'models' / 'model.pt'}\n"
              f"Synthetic CT (HU, on the MR grid) and PNG previews: {fam.root / 'inference'}\n"
              "The MR/CT pairs are phantoms made by ldmonai (MNI152-derived tissue classes), not patient data.")
    return status


LD_STEPS = 20  # DDIM steps in the demo's LD runs; the bundle's default is 50


def ld_demo(out: Path, train: bool = False, export: bool = False) -> int:
    """Tiny LD: pretrained on photo crops, fine-tuned on MNI152 slices with the latent drift;
    the δ search against real slices, then slices generated at the δ it found."""
    from ldmonai.data import make_brain_slices, make_natural_slices

    fam = _Family("LD", "ld_slice_generator", out)
    brain = make_brain_slices(fam.root / "data" / "brain", num_slices=96, size=32, seed=0)
    if train:
        make_natural_slices(fam.root / "data" / "natural", num_images=256, size=32, seed=0)
    train_steps = [
        ("pretraining tiny LD on grey photo crops (autoencoder, then UNet and text encoder)",
         ["--config_file", fam.config("train.json", "pretrain.json"), "--dataset_dir", fam.root / "data" / "natural",
          "--ae_epochs", 60, "--epochs", 20]),
        ("fine-tuning the UNet on MNI152 slices with the latent drift (delta 0.05, 60 epochs)",
         ["--config_file", fam.config("train.json"), "--dataset_dir", brain.parent, "--epochs", 60, "--delta", 0.05]),
    ]
    search = fam.root / "delta_search"
    status = fam.weights(train, train_steps) or fam.run([
        ("searching the drift delta against the real validation slices (L1)",
         ["--config_file", fam.config("inference.json", "delta_search.json"), "--dataset_dir", brain.parent,
          "--output_dir", search, "--num_inference_steps", LD_STEPS, "--search_samples", 16, "--delta_low", -0.1,
          "--delta_high", 0.1, "--num_grid", 5, "--num_refine", 2])])
    if status:
        return status
    best = json.loads((search / "delta_search.json").read_text())["best_delta"]
    status = fam.run([(f"generating slices at the delta found ({best:+.3f})",
                       ["--config_file", fam.config("inference.json"), "--output_dir", fam.root / "generated",
                        "--delta", best, "--num_inference_steps", LD_STEPS, "--num_per_prompt", 8,
                        "--prompts", "['a brain mri of a brain']"])])
    if status == 0:
        if export:
            fam.export(train_steps)
        print(f"LD weights: {fam.root / 'models' / 'model.pt'}\n"
              f"Delta search (table, L1 against delta, samples across delta): {search}\n"
              f"Generated slices (PNG + NIfTI): {fam.root / 'generated'}\n"
              "The slices are 32x32 from a tiny model: they show the method, not diagnostic images.")
    return status


FAMILIES = (ldseg_demo, gdm_demo, ld_demo)

PREP_STEPS = [
    {"step": "reorient"},
    {"step": "resample", "spacing": 1.0},
    {"step": "normalize"},
    {"step": "slices", "axis": "axial"},
]


def write_overview(out: Path, max_rows: int = 4) -> Path | None:
    """One PNG: a few preprocessed sample slices on top, then the LDSeg previews
    (image | segmentation | entropy | variance), the GDM previews (MR | synthetic CT),
    and LD's δ grid (a row per δ, same noise), each row scaled to the same height."""
    import numpy as np
    from PIL import Image

    from ldmonai.io.preview import panel, save_png

    def load(path: Path, height: int = 128) -> np.ndarray:
        img = Image.open(path).convert("RGB")
        return np.asarray(img.resize((max(1, round(img.width * height / img.height)), height), Image.BILINEAR))

    # Four middle slices of the largest preprocessed sample volume (the wheels' DICOM samples
    # hold test patterns, not anatomy; the model rows show MNI152 brains and phantoms).
    cases = [sorted(d.glob("*.png")) for d in (out / "prep").glob("*/slices")]
    slices = max(cases, key=len, default=[])
    lo, hi = len(slices) // 4, max(len(slices) // 4, 3 * len(slices) // 4 - 1)
    picks = [slices[i] for i in np.unique(np.linspace(lo, hi, 4).astype(int))] if slices else []
    rows = [panel([load(p) for p in picks])] if picks else []
    for family in ("ldseg", "gdm"):
        rows += [load(p) for p in sorted((out / family / "inference").glob("*_preview.png"))[:max_rows]]
    grid = out / "ld_slice_generator" / "delta_search" / "delta_grid.png"
    if grid.is_file():
        rows.append(load(grid, height=128 * 4))
    if not rows:
        return None
    width = max(r.shape[1] for r in rows)
    stacked = np.concatenate([np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0))) for r in rows], axis=0)
    path = out / "overview.png"
    save_png(path, stacked)
    return path


def run_demo(out_dir: str | Path = "demo_out", train: bool = False, export: bool = False) -> int:
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
    if not (BUNDLES / "ldseg" / "configs").is_dir():
        print(f"model demos skipped: bundle configs not found under {BUNDLES} (run from a source checkout)")
        status = 0
    else:
        status = max(family(out, train, export) for family in FAMILIES)
    overview = write_overview(out)
    if overview:
        print(f"\nOverview: {overview}")
    return 0 if report.ok and not prep.failed and status == 0 else 1
