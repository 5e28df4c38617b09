"""2D slice sets for LD that install from the package registry: natural photos and brain templates.

- :func:`make_natural_slices`: grey-level random crops of scikit-image's sample photos with
  captions, the offline "general-domain" data that LD's pretraining recipe starts from
  (the honest stand-in for the natural images Stable Diffusion saw).
- :func:`make_brain_slices`: axial slices of the MNI152 2009 T1 template (nilearn wheel), with
  small random affine changes per slice, plus slices of any other NIfTI volumes given
  (Colin27, real scans) and any 2D images given as they are.
- :func:`make_aging_pairs`: (source, target, instruction) triples for InstructPix2Pix, where
  the target is the source after a simulated atrophy (:func:`simulate_atrophy`). It is a
  stand-in for longitudinal scans of one subject, which no registry ships; real pairs go in
  a datalist of the same form.

Both write PNG slices and a datalist ``{"training": [...], "validation": [...]}`` whose
entries hold ``image`` and ``prompt``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ldmonai.errors import LdmonaiError
from ldmonai.data.datalist import write_datalist
from ldmonai.io.preview import save_unit_png

__all__ = ["NATURAL_SUBJECTS", "make_aging_pairs", "make_brain_slices", "make_natural_slices", "simulate_atrophy"]

#: scikit-image sample photos bundled in its wheel, and what the caption calls them
NATURAL_SUBJECTS = {
    "astronaut": "an astronaut", "camera": "a man with a camera", "coffee": "a cup of coffee", "chelsea": "a cat",
    "rocket": "a rocket", "coins": "coins", "moon": "the surface of the moon", "page": "a page of text",
    "horse": "a horse", "immunohistochemistry": "stained tissue", "hubble_deep_field": "galaxies",
    "brick": "a brick wall", "grass": "grass", "gravel": "gravel", "text": "text", "clock": "a clock",
    "retina": "a retina", "cell": "cells", "logo": "a logo", "colorwheel": "a colour wheel",
    "checkerboard": "a checkerboard", "microaneurysms": "a retina with microaneurysms",
}


def _unit(array: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1] (a constant image becomes 0)."""
    return (array - array.min()) / max(float(array.max() - array.min()), 1e-6)


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(size, size), mode="area" if min(img.shape) > size else "bilinear")[0, 0].numpy()


def _split(entries: list[dict], val_fraction: float) -> dict[str, list[dict]]:
    n_val = int(round(len(entries) * val_fraction))
    return {"training": entries[: len(entries) - n_val], "validation": entries[len(entries) - n_val :]}


def _template_slices(num: int, size: int, seed: int, central_fraction: float, rng: np.random.Generator):
    """``num`` axial MNI152 T1 slices ``(size, size)`` in [0, 1], oriented for display, from the
    central ``central_fraction`` of the axial extent, each with a small random rotation, scale
    and shift (``seed``); slice positions come from ``rng``."""
    from monai.transforms import RandAffine

    from ldmonai.data.mni_tissue import template_grid

    t1, _, _ = template_grid((size, size, size))
    affine = RandAffine(prob=1.0, rotate_range=0.15, scale_range=0.08, translate_range=size * 0.04, padding_mode="zeros")
    affine.set_random_state(seed)
    lo = int(size * (1 - central_fraction) / 2)
    for _ in range(num):
        z = int(rng.integers(lo, size - lo))
        yield np.clip(np.rot90(affine(t1[:, :, :, z]).numpy()[0]), 0, 1)


def template_slice_affine(size: int) -> np.ndarray:
    """The 4x4 affine of a ``size``² slice from :func:`make_brain_slices`, as stored in NIfTI.

    The slices are axial MNI152 slices over the brain's bounding box, shown anterior-up: slice
    pixel ``(row i, column j)`` is template voxel ``(x=j, y=size-1-i)``. NIfTI stores the slice
    transposed (voxel ``(j, i)``), so the affine is the template grid's, composed with that flip of
    y and placed at the central axial position. A generated slice written with it overlays the
    template in a viewer, in millimetres; a slice from a volume taken at another height keeps its
    in-plane geometry and differs only in z.
    """
    from ldmonai.data.mni_tissue import template_grid

    _, _, grid = template_grid((size, size, size))
    flip = np.array([[1, 0, 0, 0], [0, -1, 0, size - 1], [0, 0, 1, size // 2], [0, 0, 0, 1]], dtype=np.float64)
    return grid @ flip


def make_natural_slices(out_dir: str | os.PathLike, num_images: int = 256, size: int = 32, seed: int = 0,
                        val_fraction: float = 0.1) -> Path:
    """Random square crops (10 to 100% of the shorter side) of the sample photos, grey, ``size``².

    Captions read "a photo of <subject>". Returns the datalist path.
    """
    try:
        import skimage.data as photos
        from skimage.color import rgb2gray, rgba2rgb
    except ImportError:
        raise LdmonaiError("the natural photos come from scikit-image", None, 'pip install "ldmonai[samples]"') from None
    rng = np.random.default_rng(seed)
    images = {}
    for name in NATURAL_SUBJECTS:
        img = np.asarray(getattr(photos, name)(), dtype=np.float32)
        if img.ndim == 3:
            img = rgb2gray(rgba2rgb(img) if img.shape[2] == 4 else img)
        images[name] = _unit(img)
    out = Path(out_dir)
    entries = []
    names = sorted(images)
    for i in range(num_images):
        name = names[i % len(names)]
        img = images[name]
        side = int(min(img.shape) * rng.uniform(0.1, 1.0))
        y, x = rng.integers(0, img.shape[0] - side + 1), rng.integers(0, img.shape[1] - side + 1)
        crop = _resize(img[y : y + side, x : x + side], size)
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        path = out / "images" / f"{name}_{i:04d}.png"
        save_unit_png(path, crop)
        entries.append({"image": str(path), "prompt": f"a photo of {NATURAL_SUBJECTS[name]}"})
    rng.shuffle(entries)
    return write_datalist(out / "datalist.json", _split(entries, val_fraction))


def make_brain_slices(out_dir: str | os.PathLike, num_slices: int = 64, size: int = 32, seed: int = 0,
                      volumes: Sequence[str | os.PathLike] = (), images: Sequence[str | os.PathLike] = (),
                      prompt: str = "a brain mri of a brain", central_fraction: float = 0.5,
                      val_fraction: float = 0.1) -> Path:
    """Axial brain slices at ``size``² in [0, 1] with ``prompt``; returns the datalist path.

    Args:
        num_slices: slices drawn from the MNI152 T1 template (central ``central_fraction`` of
            its axial extent, a small random rotation, scale and shift each).
        volumes: further 3D NIfTI volumes (Colin27, scans); their central axial slices are added.
        images: further 2D images (PNG, NIfTI slices) added as they are, resized.
    """
    import nibabel as nib

    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    entries = []
    for i, sl in enumerate(_template_slices(num_slices, size, seed, central_fraction, rng)):
        path = out / "images" / f"mni152_{i:04d}.png"
        save_unit_png(path, sl)
        entries.append({"image": str(path), "prompt": prompt})
    for v in volumes:
        try:
            vol = np.asarray(nib.load(str(v)).dataobj, dtype=np.float32)
        except Exception as err:  # noqa: BLE001 - any unreadable file gets the same advice
            raise LdmonaiError(f"cannot read volume ({type(err).__name__})", v, "pass a 3D NIfTI file") from None
        if vol.ndim != 3:
            raise LdmonaiError(f"expected a 3D volume, got shape {vol.shape}", v, "pass a 3D NIfTI file")
        vol = _unit(vol)
        n = vol.shape[2]
        for j, z in enumerate(np.linspace(int(n * (1 - central_fraction) / 2), int(n * (1 + central_fraction) / 2) - 1, 8).astype(int)):
            path = out / "images" / f"{Path(v).name.split('.')[0]}_{j:02d}.png"
            save_unit_png(path, np.rot90(_resize(vol[:, :, z], size)))
            entries.append({"image": str(path), "prompt": prompt})
    for img_path in images:
        from PIL import Image

        try:
            img = np.asarray(Image.open(img_path).convert("F"), dtype=np.float32)
        except Exception as err:  # noqa: BLE001
            raise LdmonaiError(f"cannot read image ({type(err).__name__})", img_path, "pass a PNG or another 2D image") from None
        img = _unit(img)
        path = out / "images" / f"{Path(img_path).stem}.png"
        save_unit_png(path, _resize(img, size))
        entries.append({"image": str(path), "prompt": prompt})
    order = rng.permutation(len(entries))
    data = _split([entries[k] for k in order], val_fraction)
    # the geometry generated slices are written with (ldmonai.ld.pipeline.generate_slices)
    data["slice_affine"] = template_slice_affine(size).round(6).tolist()
    return write_datalist(out / "datalist.json", data)


def simulate_atrophy(image: np.ndarray, years: float, rate: float = 0.015, width: float = 0.35) -> np.ndarray:
    """A crude ageing model of an axial slice: the central structures (ventricles) widen.

    Each output point at normalised radius r (from the image centre, in [-1, 1] units)
    samples the input at r · (1 − a · exp(−r² / 2w²)) with a = ``rate`` · ``years``, so the
    centre dilates smoothly and the skull stays put. ``(H, W)`` in, ``(H, W)`` out.
    """
    h, w = image.shape
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    shrink = 1 - rate * years * torch.exp(-(xx**2 + yy**2) / (2 * width**2))
    grid = torch.stack([xx * shrink, yy * shrink], -1)[None]
    src = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=True)[0, 0].numpy()


def make_aging_pairs(out_dir: str | os.PathLike, num_pairs: int = 64, size: int = 32, seed: int = 0,
                     ages: tuple[int, int] = (60, 80), years: tuple[int, int] = (2, 12), age_style: str = "word",
                     central_fraction: float = 0.5, val_fraction: float = 0.1) -> Path:
    """Pairs of MNI152 slices before and after :func:`simulate_atrophy`, with instructions
    such as "make this brain seven years older" (``age_style`` renders the age difference:
    ``binned``, ``word`` or ``numerical``, :func:`~ldmonai.ld.prompts.render_age_difference`).

    Entries hold ``source``, ``image`` (the target), ``prompt`` (the instruction), ``age`` and
    ``target_age``. Returns the datalist path.
    """
    from ldmonai.ld.prompts import PromptBuilder

    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    prompts = PromptBuilder(fields=("age",), age_style=age_style)
    entries = []
    for i, source in enumerate(_template_slices(num_pairs, size, seed, central_fraction, rng)):
        age, k = int(rng.integers(*ages)), int(rng.integers(*years))
        target = np.clip(simulate_atrophy(source, k), 0, 1)
        paths = {key: out / "pairs" / f"{i:04d}_{key}.png" for key in ("source", "target")}
        save_unit_png(paths["source"], source)
        save_unit_png(paths["target"], target)
        entries.append({"source": str(paths["source"]), "image": str(paths["target"]), "age": age, "target_age": age + k,
                        "prompt": prompts.instruction({"age": age}, {"age": age + k})})
    return write_datalist(out / "datalist.json", _split(entries, val_fraction))
