"""``demo_out/overview.png``: one titled figure, a labelled row per stage of ``ldmonai demo``.

Each row reads the stage's own outputs from disk (the NIfTI and MHA files a user would open),
so the figure shows what was written, not an in-memory copy:

1. DICOM -> NIfTI: the middle slice of each converted series, with modality, grid and spacing.
2. Preprocessing: the head before (with the skull-strip mask outline) and after.
3. LDSeg: image, segmentation, entropy (colour bar) and the reference labels, with the Dice.
4. GDM: MR, synthetic CT, reference CT and the absolute error, in HU with colour bars, and the
   MAE inside the body mask.
5. LD: real slices beside slices generated at δ = 0 and at the δ the weights were trained with.

A stage whose outputs are missing gets a row that says so, rather than disappearing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ["write_overview"]


def _axial(volume: np.ndarray, index: int | None = None) -> np.ndarray:
    """The axial slice of a RAS-ordered ``(X, Y, Z)`` array, anterior up and the patient's right on
    the viewer's right, as the bundles' PNG previews show it."""
    volume = np.squeeze(volume)
    if volume.ndim == 2:
        return np.rot90(volume)
    return np.rot90(volume[:, :, volume.shape[2] // 2 if index is None else index])


def _ras(path: Path):
    """``(array (X, Y, Z) in RAS order, spacing)`` of any image SimpleITK reads."""
    import SimpleITK as sitk

    # ITK names orientations by where each axis comes *from*: DICOMOrient "RAS" gives the direction
    # diag(-1, -1, 1) in ITK's LPS world, i.e. indices increasing towards Right, Anterior and
    # Superior, nibabel's RAS+. SimpleITK's array is (Z, Y, X), hence the transpose.
    return _ras_array(sitk.ReadImage(str(path)))


def _ras_array(image):
    """``(array (X, Y, Z) in RAS order, spacing)`` of a SimpleITK image."""
    import SimpleITK as sitk

    img = sitk.DICOMOrient(image, "RAS")
    return sitk.GetArrayFromImage(img).transpose(2, 1, 0), img.GetSpacing()


def _resampled_like(path: Path, reference: Path) -> np.ndarray:
    """``path``'s image on ``reference``'s grid (linear), as a RAS ``(X, Y, Z)`` array."""
    import SimpleITK as sitk

    moved = sitk.Resample(sitk.ReadImage(str(path)), sitk.ReadImage(str(reference)), sitk.Transform(), sitk.sitkLinear, 0.0)
    return _ras_array(moved)[0]


def _show(ax, image, title: str, cmap: str = "gray", vmin=None, vmax=None, colorbar: str | None = None):
    im = ax.imshow(image, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    if colorbar is not None:
        bar = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
        bar.set_label(colorbar, fontsize=7)
        bar.ax.tick_params(labelsize=6)
    return im


def _percentile_window(image: np.ndarray) -> tuple[float, float]:
    finite = image[np.isfinite(image)]
    return (float(np.percentile(finite, 1)), float(np.percentile(finite, 99))) if finite.size else (0.0, 1.0)


def _missing(axes, what: str) -> None:
    """A row whose stage left no output: says which, in its first panel, and blanks the others."""
    axes = np.atleast_1d(axes)
    axes[0].text(0.5, 0.5, f"no output:\n{what}", ha="center", va="center", fontsize=8, color="darkred")
    for ax in axes:
        ax.set_axis_off()


def _dicom_row(fig, out: Path) -> None:
    series = sorted((out / "nifti").glob("*/*.nii.gz"))
    axes = fig.subplots(1, max(1, len(series)))
    axes = np.atleast_1d(axes)
    if not series:
        _missing(axes, "demo_out/nifti/*/*.nii.gz")
        return
    import nibabel as nib

    for ax, path in zip(axes, series):
        img = nib.as_closest_canonical(nib.load(str(path)))
        data = np.asarray(img.dataobj, dtype=np.float32)
        sidecar = path.with_name(path.name.replace(".nii.gz", ".json"))
        meta = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
        zooms = img.header.get_zooms()[:2]
        lo, hi = _percentile_window(data)
        _show(ax, _axial(data), f"{meta.get('Modality', '?')} {meta.get('Manufacturer', '')}\n"
              f"{'x'.join(map(str, data.shape[:2]))}, {zooms[0]:.2f}x{zooms[1]:.2f} mm", vmin=lo, vmax=hi)


def _prep_row(fig, out: Path, head: Path | None) -> None:
    axes = fig.subplots(1, 4)
    cases = sorted((out / "prep").glob("*/*_mask.nii.gz"))
    if not cases or head is None or not head.is_file():
        _missing(axes, "demo_out/prep/*/*_mask.nii.gz")
        return
    mask_path = cases[0]
    image_path = mask_path.with_name(mask_path.name.replace("_mask", "_image"))
    mask, spacing = _ras(mask_path)
    before = _resampled_like(head, mask_path)
    after, _ = _ras(image_path)
    volume_ml = float(mask.sum()) * float(np.prod(spacing)) / 1000.0
    centre = [int(np.mean(np.nonzero(mask.any(axis=tuple(a for a in range(3) if a != k)))[0])) for k in range(3)]
    lo, hi = _percentile_window(before)
    views = [("axial", lambda v: np.rot90(v[:, :, centre[2]])), ("coronal", lambda v: np.rot90(v[:, centre[1], :])),
             ("sagittal", lambda v: np.rot90(v[centre[0], :, :]))]
    for ax, (name, cut) in zip(axes[:3], views):
        _show(ax, cut(before), f"input, {name}\nred: brain mask ({volume_ml:.0f} ml)", vmin=lo, vmax=hi)
        ax.contour(cut(mask), levels=[0.5], colors="red", linewidths=0.8)
    lo, hi = _percentile_window(after[mask > 0]) if mask.any() else (None, None)
    # outside the brain the z-scored image is 0, mid-grey; show it at the window's floor instead
    _show(axes[3], views[0][1](np.where(mask > 0, after, lo if lo is not None else 0)), "after: stripped, N4, z-score",
          vmin=lo, vmax=hi, colorbar="z (inside the mask)")


def _ldseg_row(fig, out: Path) -> None:
    axes = fig.subplots(1, 4)
    root = out / "ldseg"
    segs = sorted((root / "inference").glob("*_seg.nii.gz"))
    datalist = root / "data" / "datalist.json"
    if not segs or not datalist.is_file():
        _missing(axes, "demo_out/ldseg/inference/*_seg.nii.gz")
        return
    import nibabel as nib
    from matplotlib.colors import ListedColormap

    seg_path = segs[0]
    stem = seg_path.name[: -len("_seg.nii.gz")]
    data = json.loads(datalist.read_text())
    entry = next((e for e in data.get("test", []) if Path(e["image"]).name.startswith(stem)), None)
    names = data.get("labels", {})
    load = lambda p: np.asarray(nib.load(str(p)).dataobj, dtype=np.float32)  # noqa: E731
    image = load(root / "data" / entry["image"]) if entry else None
    label = load(root / "data" / entry["label"]) if entry and entry.get("label") else None
    seg = load(seg_path)
    entropy = load(seg_path.with_name(f"{stem}_entropy.nii.gz"))
    classes = ListedColormap(["black", "#3b75af", "#9acd32", "#f0e442"][: max(2, int(seg.max()) + 1)])
    vmax = max(1, int(seg.max()))
    if image is not None:
        _show(axes[0], _axial(image), f"MNI152 test case {stem}\n(nilearn wheel)")
    dice = []
    if label is not None:
        for c in range(1, vmax + 1):
            a, b = seg == c, label == c
            if a.sum() + b.sum():
                dice.append(2 * float((a & b).sum()) / float(a.sum() + b.sum()))
    _show(axes[1], _axial(seg), "LDSeg segmentation" + (f"\nmean Dice {np.mean(dice):.2f}" if dice else ""),
          cmap=classes, vmin=0, vmax=vmax)
    _show(axes[2], _axial(entropy), "entropy over samples", cmap="inferno", vmin=0, colorbar="nats")
    if label is not None:
        _show(axes[3], _axial(label), "reference labels\n" + ", ".join(str(names.get(str(c), c)) for c in range(1, vmax + 1)),
              cmap=classes, vmin=0, vmax=vmax)
    else:
        axes[3].set_axis_off()


def _gdm_row(fig, out: Path) -> None:
    axes = fig.subplots(1, 4)
    root = out / "gdm"
    scts = sorted((root / "inference").glob("*_sct.nii.gz"))
    if not scts:
        _missing(axes, "demo_out/gdm/inference/*_sct.nii.gz")
        return
    sct_path = scts[0]
    case = sct_path.name[: -len("_sct.nii.gz")]
    folder = next((root / "data" / "Task1").glob(f"*/{case}"), None)
    if folder is None:
        _missing(axes, f"the reference CT of {case}")
        return
    ct, _ = _ras(folder / "ct.mha")
    mr, _ = _ras(folder / "mr.mha")
    mask = _ras(folder / "mask.mha")[0] > 0 if (folder / "mask.mha").is_file() else np.ones(ct.shape, bool)
    sct = _resampled_like(sct_path, folder / "ct.mha")
    mae = float(np.abs(sct - ct)[mask].mean())
    body_z = np.nonzero(mask.any(axis=(0, 1)))[0]
    z = int(body_z[0] + 0.6 * (body_z[-1] - body_z[0]))  # through the brain, above the skull base
    lo, hi = _percentile_window(mr)
    _show(axes[0], _axial(mr, z), f"MR phantom {case}", vmin=lo, vmax=hi)
    _show(axes[1], _axial(sct, z), "GDM synthetic CT\n(one network call)", vmin=-1000, vmax=1500, colorbar="HU")
    _show(axes[2], _axial(ct, z), "reference CT", vmin=-1000, vmax=1500, colorbar="HU")
    _show(axes[3], _axial(np.where(mask, np.abs(sct - ct), 0), z), f"|error|, MAE {mae:.0f} HU\n(inside the body mask)",
          cmap="magma", vmin=0, vmax=500, colorbar="HU")


def _ld_row(fig, out: Path) -> None:
    axes = fig.subplots(1, 6)
    root = out / "ld_slice_generator"
    from PIL import Image

    def pngs(folder: Path) -> list[Path]:
        return sorted(folder.glob("*.png"))[:2]

    datalist = root / "data" / "brain" / "datalist.json"
    real = []
    if datalist.is_file():
        real = [datalist.parent / e["image"] for e in json.loads(datalist.read_text()).get("validation", [])[:2]]
    search = root / "delta_search" / "delta_search.json"
    best = json.loads(search.read_text())["best_delta"] if search.is_file() else None
    run = root / "generated" / "prompts.json"
    trained = json.loads(run.read_text())["delta"] if run.is_file() else None
    columns = [(p, "real MNI152 slice") for p in real]
    columns += [(p, "generated, δ = 0") for p in pngs(root / "generated_delta0")]
    label = "generated" if trained is None else f"generated, trained δ = {trained:+.3f}"
    if best is not None:
        label += f"\n(search on it: {best:+.3f})"
    columns += [(p, label) for p in pngs(root / "generated")]
    if not columns:
        _missing(axes, "demo_out/ld_slice_generator/generated/*.png")
    for ax, (path, title) in zip(axes, columns):
        _show(ax, np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0, title, vmin=0, vmax=1)
    for ax in axes[len(columns):]:
        ax.set_axis_off()


ROWS = (
    ("1  DICOM to NIfTI (ldmonai prep convert): real scans that ship in the pydicom wheel", _dicom_row),
    ("2  Preprocessing (ldmonai prep run): reorient, N4, skull-strip (deepbet, else atlas), z-score, on a head phantom "
     "(ROBEX head with random affine + elastic warp, bias and noise)", None),
    ("3  LDSeg (tiny 2D preset, 64x64): tissue segmentation with uncertainty from 8 samples", _ldseg_row),
    ("4  GDM (tiny preset, 48^3): MR-to-CT synthesis on head phantoms made by ldmonai", _gdm_row),
    ("5  LD (tiny preset, 32x32): MNI152 slices, and slices generated with the latent drift δ", _ld_row),
)


def write_overview(out: str | Path, head: str | Path | None = None) -> Path:
    """Write ``out/overview.png`` from the demo's outputs under ``out``; ``head`` is the image the
    preprocessing row started from. Returns the path written."""
    from ldmonai.io.preview import pyplot, save_figure

    out = Path(out)
    fig = pyplot().figure(figsize=(13, 16), layout="constrained")
    fig.suptitle("ldmonai demo: every stage on data that installs from the package registries (2 CPU cores)",
                 fontsize=12, fontweight="bold")
    for sub, (title, draw) in zip(fig.subfigures(len(ROWS), 1), ROWS):
        sub.suptitle(title, fontsize=9.5, x=0.01, ha="left")
        if draw is None:
            _prep_row(sub, out, Path(head) if head else None)
        else:
            draw(sub, out)
    fig.text(0.99, 0.002, "tiny presets with shipped demo weights (bundles/*/models/demo_tiny.pt); "
             "phantoms and templates, not patient data; made by `make demo`", ha="right", fontsize=7, color="grey")
    path = out / "overview.png"
    save_figure(fig, path, dpi=90)
    return path
