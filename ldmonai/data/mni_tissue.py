"""Brain tissue segmentation cases made from the MNI152 2009 template that nilearn ships.

A real, openly licensed T1 template with its GM and WM probability maps installs from the
package registry (nilearn wheel), so tests and the demo need no download. Each case is the
template under a random affine and elastic deformation with random bias field, contrast
and noise, labelled 0 background, 1 CSF, 2 grey matter, 3 white matter. These are
*augmented copies of one brain*, not a population: good for proving that a model learns,
not for claims about clinical accuracy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from monai.transforms import (
    Compose,
    Rand2DElasticd,
    Rand3DElasticd,
    RandAffined,
    RandAdjustContrastd,
    RandBiasFieldd,
    RandGaussianNoised,
    RandScaleIntensityd,
)
from tqdm.auto import tqdm

from ldmonai.data.datalist import write_datalist
from ldmonai.io.atomic import atomic_path
from ldmonai.prep.templates import MNI152_FILES, nilearn_template_dir

CLASS_NAMES = ("background", "csf", "grey_matter", "white_matter")
def template_grid(size: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """The template resampled to ``size`` over the brain's bounding box.

    Returns:
        image ``(1, *size)`` float in [0, 1], label ``(1, *size)`` int, and the 4x4 affine of
        the new grid (world coordinates of the MNI template).
    """
    root = nilearn_template_dir()
    imgs = {k: nib.load(root / name) for k, name in MNI152_FILES.items()}
    # The wheel stores 0..255 maps; nilearn's loaders rescale them to [0, 1], and so do we.
    vols = {k: np.asarray(img.dataobj, dtype=np.float32) for k, img in imgs.items()}
    vols = {k: v / v.max() for k, v in vols.items()}
    gm, wm = vols["gm"], vols["wm"]
    tissue = (gm + wm) > 0.3
    # CSF is what the tissue maps enclose: ventricles (holes) and sulci (closing gaps).
    brain = ndimage.binary_fill_holes(ndimage.binary_closing(tissue, iterations=2))
    full = np.zeros(gm.shape, dtype=np.int64)
    full[brain] = 1
    full[(gm > 0.5) & (gm >= wm)] = 2
    full[(wm > 0.5) & (wm > gm)] = 3
    idx = np.argwhere(brain)
    lo = np.maximum(idx.min(0) - 2, 0)
    hi = np.minimum(idx.max(0) + 3, brain.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    onehot = torch.from_numpy(full[box]).long()
    stack = torch.cat(
        [torch.from_numpy(vols["t1"][box] * brain[box])[None], F.one_hot(onehot, len(CLASS_NAMES)).permute(3, 0, 1, 2).float()]
    )[None]
    # Labels are resampled as one-hot probabilities and re-argmaxed, so thin classes survive.
    stack = F.interpolate(stack, size=tuple(size), mode="trilinear", align_corners=False)[0]
    t1, label = stack[0], stack[1:].argmax(0)
    src = imgs["t1"].affine
    scale = (hi - lo) / np.asarray(size, dtype=float)
    affine = src.copy()
    affine[:3, :3] = src[:3, :3] * scale
    # Voxel centres of the coarse grid sit half a coarse voxel inside the box corner.
    affine[:3, 3] = src[:3, :3] @ (lo + 0.5 * scale - 0.5) + src[:3, 3]
    return (t1 / t1.max())[None], label[None], affine


def _augment(spatial_dims: int, seed: int) -> Compose:
    keys = ["image", "label"]
    elastic = (
        Rand3DElasticd(keys, sigma_range=(5, 7), magnitude_range=(40, 80), prob=1.0, mode=("bilinear", "nearest"), padding_mode="zeros")
        if spatial_dims == 3
        else Rand2DElasticd(keys, spacing=(16, 16), magnitude_range=(0.5, 1.5), prob=1.0, mode=("bilinear", "nearest"), padding_mode="zeros")
    )
    rotate = (0.15,) * (3 if spatial_dims == 3 else 1)
    t = Compose(
        [
            RandAffined(keys, prob=1.0, rotate_range=rotate, scale_range=0.1, translate_range=2, mode=("bilinear", "nearest"), padding_mode="zeros"),
            elastic,
            RandBiasFieldd("image", coeff_range=(0.1, 0.3), prob=1.0),
            RandAdjustContrastd("image", gamma=(0.7, 1.5), prob=1.0),
            RandScaleIntensityd("image", factors=0.2, prob=1.0),
            RandGaussianNoised("image", std=0.03, prob=1.0),
        ]
    )
    t.set_random_state(seed=seed)
    return t


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        nib.save(nib.Nifti1Image(array, affine), tmp)


def make_tissue_dataset(
    out_dir: str | Path,
    spatial_dims: int = 2,
    num_train: int = 24,
    num_val: int = 8,
    num_test: int = 0,
    size: Sequence[int] | int = 64,
    seed: int = 0,
    progress: bool = False,
) -> Path:
    """Write augmented MNI152 tissue cases and a Decathlon-style ``datalist.json``.

    Args:
        out_dir: folder for ``imagesTr/``, ``labelsTr/`` and ``datalist.json``.
        spatial_dims: 3 writes volumes; 2 writes one axial slice per case (near the
            ventricles, where all four classes appear).
        num_train, num_val, num_test: cases per split; the split is fixed in the datalist.
        size: grid size per axis (an int, or a sequence of ``spatial_dims`` ints).
        seed: same seed, same files.

    Returns:
        the path of ``datalist.json`` (paths inside are relative to its folder).
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    out_dir = Path(out_dir)
    size = (size,) * spatial_dims if isinstance(size, int) else tuple(size)
    grid = size if spatial_dims == 3 else (*size, max(size) // 2)
    image, label, affine = template_grid(grid)
    augment = _augment(spatial_dims, seed)
    rng = np.random.default_rng(seed)
    splits = {"training": num_train, "validation": num_val, "test": num_test}
    datalist: dict[str, list] = {"name": "mni152-tissue", "labels": dict(enumerate(CLASS_NAMES)), "numClasses": len(CLASS_NAMES)}
    total = sum(splits.values())
    bar = tqdm(total=total, desc="tissue cases", disable=not progress)
    case = 0
    for split, n in splits.items():
        entries = []
        for _ in range(n):
            if spatial_dims == 2:
                z = int(rng.integers(int(grid[2] * 0.45), int(grid[2] * 0.65)))
                sample = {"image": image[..., z], "label": label[..., z]}
                case_affine = affine.copy()
                case_affine[:3, 3] += affine[:3, 2] * z
            else:
                sample = {"image": image, "label": label}
                case_affine = affine
            out = augment(sample)
            img = np.asarray(out["image"][0], dtype=np.float32)
            lab = np.asarray(out["label"][0]).round().astype(np.uint8)
            name = f"case_{case:03d}.nii.gz"
            _save(img, case_affine, out_dir / "imagesTr" / name)
            _save(lab, case_affine, out_dir / "labelsTr" / name)
            entries.append({"image": out_dir / "imagesTr" / name, "label": out_dir / "labelsTr" / name})
            case += 1
            bar.update()
        datalist[split] = entries
    bar.close()
    return write_datalist(out_dir / "datalist.json", datalist)
