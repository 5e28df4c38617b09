"""Benchmark: sparse-view CT on real head CT, FBP against FBP+SIRT and GDM.

The sparse-view generator is trained on phantoms (the shipped ``demo_svct_tiny.pt``, or any
``--ckpt`` from ``train.json`` + ``svct.json``). This measures it on real CT it never saw: each
volume of NIFTI_DIR (for example the public dcm_qa_ct suite converted with
``ldmonai prep convert``) is resampled with SimpleITK to ``--spacing`` mm, projected slice by
slice over ``--views`` angles with the bundle's projector, and reconstructed by

- FBP (what the generator starts from);
- FBP + SIRT: ``--sirt`` data-consistency steps against the measured views;
- GDM: the one-step generator on the FBP (sliding window, as the inference config runs it);
- GDM + SIRT.

Reported per volume, inside the head (CT > -500 HU, holes filled): MAE (HU), PSNR and SSIM
with the SynthRAD definitions (``ldmonai.metrics``). With several ``--ckpt`` (generators trained
with different seeds) the GDM rows are mean ± sd over them.

    python benchmarks/svct_real.py NIFTI_DIR [--ckpt A.pt B.pt ...] [--spacing 4] [--views 36] [--sirt 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.measure import cpu_name  # noqa: E402

DEFAULT_CKPT = ROOT / "bundles" / "gdm" / "models" / "demo_svct_tiny.pt"
METHODS = ("FBP", "FBP+SIRT", "GDM", "GDM+SIRT")


def head_volumes(folder: Path) -> list[Path]:
    """3D CT volumes of at least 16 slices whose values look like HU. dcm2niix writes a corrected
    copy beside a series with gantry tilt (``_Tilt_1``) or with unequal slice gaps as well
    (``_Tilt_Eq_1``): the corrected copy is kept, the original dropped."""
    import SimpleITK as sitk

    found = []
    for path in sorted(folder.rglob("*.nii*")):
        stem = path.name.replace(".nii.gz", "").replace(".nii", "")
        if any(p.name.startswith(stem + "_Tilt") for p in path.parent.iterdir()):
            continue
        img = sitk.ReadImage(str(path))
        if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1 or img.GetSize()[2] < 16:
            continue
        a = sitk.GetArrayViewFromImage(img)
        if a.min() <= -900 and a.max() >= 300:
            found.append(path)
    return found


def resample(path: Path, spacing: float):
    """The CT on an isotropic ``spacing`` grid (linear, air outside), as ``(X, Y, Z)`` HU."""
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path), sitk.sitkFloat32)
    size = [max(1, int(round(n * s / spacing))) for n, s in zip(img.GetSize(), img.GetSpacing())]
    out = sitk.Resample(img, size, sitk.Transform(), sitk.sitkLinear, img.GetOrigin(), [spacing] * 3,
                        img.GetDirection(), -1024.0, sitk.sitkFloat32)
    return np.ascontiguousarray(sitk.GetArrayFromImage(out).transpose(2, 1, 0))


def head_mask(ct: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    body = ct > -500
    labels, n = ndimage.label(body)
    if n > 1:  # the head, not the table or the head holder
        sizes = ndimage.sum(body, labels, range(1, n + 1))
        body = labels == (1 + int(np.argmax(sizes)))
    return ndimage.binary_fill_holes(body)


def load_generator(ckpt: Path):
    import torch
    from monai.networks.nets import UNet

    from ldmonai.networks import ResidualGenerator

    net = ResidualGenerator(UNet(3, 1, 1, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=2))
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    net.load_state_dict(state.get("model", state))
    return net.eval()


def reconstruct(ct_hu: np.ndarray, nets: list, views: int, sirt: int) -> list[dict[str, np.ndarray]]:
    """The four reconstructions for each generator in ``nets``; the simulated scan, the FBP and
    FBP + SIRT are computed once per volume and shared by them."""
    import torch
    from monai.inferers import SlidingWindowInferer

    from ldmonai.gdm import DataConsistencyd, SparseViewd, hu_to_unit, unit_to_hu

    label = hu_to_unit(torch.as_tensor(ct_hu, dtype=torch.float32).clamp(-1024, 3071))[None]
    d = SparseViewd(num_views=views, sinogram_key="sinogram")({"label": label})
    inferer = SlidingWindowInferer(roi_size=(32, 32, 32), sw_batch_size=4, overlap=0.25, mode="gaussian")
    refine = DataConsistencyd(steps=sirt, num_views=views)

    def hu(v):
        return np.asarray(unit_to_hu(v.clamp(-1, 1))[0], dtype=np.float64)

    fbp = {"FBP": hu(d["image"]), "FBP+SIRT": hu(refine({"pred": d["image"], "sinogram": d["sinogram"]})["pred"])}
    out = []
    for net in nets:
        with torch.no_grad():
            gdm = inferer(d["image"][None], net)[0]
        out.append({**fbp, "GDM": hu(gdm), "GDM+SIRT": hu(refine({"pred": gdm, "sinogram": d["sinogram"]})["pred"])})
    return out


def _line(method: str, values: dict[str, list[float]]) -> str:
    def ms(v, digits):
        sd = f" ± {statistics.stdev(v):.{digits}f}" if len(v) > 1 and statistics.stdev(v) > 0 else ""
        return f"{statistics.mean(v):.{digits}f}{sd}"
    return f"{method:<9} MAE {ms(values['mae'], 1):>14} HU   PSNR {ms(values['psnr'], 2):>14} dB   SSIM {ms(values['ssim'], 4)}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("nifti_dir")
    parser.add_argument("--ckpt", nargs="+", default=[str(DEFAULT_CKPT)], help="one or more generators (seeds)")
    parser.add_argument("--spacing", type=float, default=4.0, help="isotropic grid in mm (the tiny preset trains near 4 mm)")
    parser.add_argument("--views", type=int, default=36)
    parser.add_argument("--sirt", type=int, default=20, help="SIRT steps for the +SIRT rows")
    parser.add_argument("--json")
    args = parser.parse_args()
    folder = Path(args.nifti_dir)
    if not folder.is_dir():
        print(f"{folder}: not a folder; convert a CT series first (ldmonai prep convert IN NIFTI_DIR)", file=sys.stderr)
        return 2
    import torch

    from ldmonai.metrics import image_metrics

    torch.manual_seed(0)
    volumes = head_volumes(folder)
    if not volumes:
        print(f"{folder}: no 3D CT volume in HU with 16 slices or more", file=sys.stderr)
        return 2
    nets = [load_generator(Path(c)) for c in args.ckpt]
    print(f"sparse-view CT on {len(volumes)} real CT volumes from {folder}: {args.views} views, {args.spacing} mm, "
          f"{args.sirt} SIRT steps; {len(nets)} generator(s): {', '.join(args.ckpt)}")
    print(f"hardware: {cpu_name()}, torch threads {torch.get_num_threads()}")
    rows = []
    for path in volumes:
        start = time.perf_counter()
        ct = resample(path, args.spacing)
        mask = head_mask(ct)
        runs = [{name: image_metrics(ct, rec, mask, names=("mae", "psnr", "ssim")) for name, rec in recs.items()}
                for recs in reconstruct(ct, nets, args.views, args.sirt)]
        row = {"volume": path.name, "shape": list(ct.shape), "runs": runs}
        rows.append(row)
        print(f"  {path.name} {tuple(ct.shape)}, {time.perf_counter() - start:.1f} s")
        for m in METHODS:
            print("    " + _line(m, {k: [r[m][k] for r in runs] for k in ("mae", "psnr", "ssim")}))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "cpu": cpu_name(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
