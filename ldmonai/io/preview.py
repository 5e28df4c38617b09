"""PNG previews of slices, label maps and uncertainty maps.

A PNG beside every NIfTI output lets a user check a run in a file browser before opening
a viewer. Volumes show their middle slice along the last axis (axial for RAS data).
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from PIL import Image

from ldmonai.io.atomic import atomic_path
from ldmonai.io.names import case_stem

# Distinct colours for label ids 1..N (0 stays transparent in overlays).
_PALETTE = np.array(
    [[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
     [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128], [220, 190, 255]],
    dtype=np.uint8,
)


def middle_slice(array) -> np.ndarray:
    """A 2D ``(H, W)`` view of ``(*S)`` or ``(1, *S)`` data: the middle slice of the last axis for 3D."""
    # duck-typed so that the prep pipelines, which write previews of ITK images, never import torch
    a = array.detach().cpu().numpy() if hasattr(array, "detach") else np.asarray(array)
    a = np.squeeze(a)
    if a.ndim == 3:
        a = a[..., a.shape[-1] // 2]
    if a.ndim != 2:
        raise ValueError(f"cannot preview an array of shape {np.shape(array)}")
    # Rows of the preview run along the second voxel axis, as viewers show axial slices.
    return np.rot90(a)


def grey(slice2d: np.ndarray, percentiles: Sequence[float] = (1, 99)) -> np.ndarray:
    """``(H, W, 3)`` uint8 with a robust intensity window."""
    finite = slice2d[np.isfinite(slice2d)]
    lo, hi = np.percentile(finite, percentiles) if finite.size else (0.0, 1.0)
    scaled = np.clip((slice2d - lo) / max(hi - lo, 1e-8), 0, 1)
    return np.repeat((np.nan_to_num(scaled) * 255).astype(np.uint8)[..., None], 3, axis=2)


def heat(slice2d: np.ndarray, vmax: float | None = None) -> np.ndarray:
    """``(H, W, 3)`` uint8 heat map (black, red, yellow, white) for uncertainty."""
    vmax = float(np.nanmax(slice2d)) if vmax is None else vmax
    x = np.clip(np.nan_to_num(slice2d) / max(vmax, 1e-8), 0, 1)
    rgb = np.stack([np.clip(3 * x, 0, 1), np.clip(3 * x - 1, 0, 1), np.clip(3 * x - 2, 0, 1)], axis=-1)
    return (rgb * 255).astype(np.uint8)


def overlay(base_rgb: np.ndarray, labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend label colours over an ``(H, W, 3)`` image; label 0 is left clear."""
    out = base_rgb.astype(np.float32)
    ids = np.rint(labels).astype(np.int64)
    mask = ids > 0
    colours = _PALETTE[(ids[mask] - 1) % len(_PALETTE)].astype(np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * colours
    return out.astype(np.uint8)


def panel(tiles: Sequence[np.ndarray], gap: int = 2) -> np.ndarray:
    """Tiles of equal height side by side, separated by a thin black gap."""
    h = max(t.shape[0] for t in tiles)
    padded = [np.pad(t, ((0, h - t.shape[0]), (0, gap), (0, 0))) for t in tiles]
    return np.concatenate(padded, axis=1)[:, :-gap] if gap else np.concatenate(padded, axis=1)


def save_png(path: str | os.PathLike, rgb: np.ndarray, min_size: int = 256) -> None:
    """Write ``(H, W, 3)`` RGB or ``(H, W)`` grey uint8 atomically, upscaled (nearest) so small grids stay visible."""
    img = Image.fromarray(rgb)
    scale = max(1, int(np.ceil(min_size / max(1, rgb.shape[0]))))
    if scale > 1:
        img = img.resize((rgb.shape[1] * scale, rgb.shape[0] * scale), Image.NEAREST)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def save_unit_png(path: str | os.PathLike, slice2d: np.ndarray) -> None:
    """Write an ``(H, W)`` slice in [0, 1] as 8-bit grey PNG at its own size, rounded, not
    rescaled: data that models train on keeps its intensities from file to file."""
    save_png(path, np.clip(slice2d * 255 + 0.5, 0, 255).astype(np.uint8), min_size=0)


def slice_row(images) -> np.ndarray:
    """``(N, 1, H, W)`` slices side by side, each stretched to its own full range."""
    return panel([grey(np.asarray(img[0]), percentiles=(0, 100)) for img in images])


def segmentation_panel(image, seg=None, label=None, maps: Sequence = ()) -> np.ndarray:
    """image | image + segmentation | image + reference label | one heat map per uncertainty map."""
    base = grey(middle_slice(image))
    tiles = [base]
    if seg is not None:
        tiles.append(overlay(base, middle_slice(seg)))
    if label is not None:
        tiles.append(overlay(base, middle_slice(label)))
    tiles += [heat(middle_slice(m)) for m in maps]
    return panel(tiles)


class SavePreviewd:
    """Dictionary transform: write ``<stem>_preview.png`` of image, segmentation and maps.

    Args:
        output_dir: where the PNGs go.
        image_key, seg_key, label_key: keys in the data dict (seg and label optional).
        map_keys: uncertainty maps to show as heat maps, when present.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        image_key: str = "image",
        seg_key: str = "seg",
        label_key: str | None = None,
        map_keys: Sequence[str] = ("entropy", "variance"),
    ) -> None:
        self.output_dir = os.fspath(output_dir)
        self.image_key = image_key
        self.seg_key = seg_key
        self.label_key = label_key
        self.map_keys = tuple(map_keys)

    def __call__(self, data: dict) -> dict:
        image = data[self.image_key]
        meta = getattr(image, "meta", {}) or {}
        stem = case_stem(str(meta.get("filename_or_obj", "case")))
        label = data.get(self.label_key) if self.label_key else None
        maps = [data[k] for k in self.map_keys if k in data]
        rgb = segmentation_panel(image[0], seg=data.get(self.seg_key), label=label, maps=maps)
        save_png(os.path.join(self.output_dir, f"{stem}_preview.png"), rgb)
        return data


HU_WINDOW = (-1000.0, 1500.0)  # one CT window for every preview, so that they compare across cases


def pyplot():
    """matplotlib's pyplot on the Agg backend: figures go to files, no display is needed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike, dpi: float | None = None) -> None:
    """Write a matplotlib figure as PNG atomically (``dpi``: the figure's own when None), then close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", **({} if dpi is None else {"dpi": dpi}))
    pyplot().close(fig)


def translation_figure(path: str | os.PathLike, tiles: Sequence[tuple[str, np.ndarray, str]], suptitle: str = "") -> None:
    """A labelled row of slices: ``(title, (H, W) slice, kind)`` per panel, where kind is ``grey``
    (robust window, no unit), ``hu`` (the fixed CT window, a HU colour bar) or ``error`` (absolute
    error in HU, 0 to 500, a colour bar). Written atomically as PNG."""
    fig, axes = pyplot().subplots(1, len(tiles), figsize=(2.6 * len(tiles), 3.0), squeeze=False)
    for ax, (title, image, kind) in zip(axes[0], tiles):
        if kind == "hu":
            im = ax.imshow(image, cmap="gray", vmin=HU_WINDOW[0], vmax=HU_WINDOW[1])
        elif kind == "error":
            im = ax.imshow(image, cmap="inferno", vmin=0, vmax=500)
        else:
            finite = image[np.isfinite(image)]
            lo, hi = np.percentile(finite, (1, 99)) if finite.size else (0.0, 1.0)
            im = ax.imshow(image, cmap="gray", vmin=lo, vmax=max(hi, lo + 1e-8))
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
        if kind in ("hu", "error"):
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).set_label("HU" if kind == "hu" else "|error| HU", fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


class SaveTranslationPreviewd:
    """Dictionary transform: write ``<stem>_preview.png``, a labelled figure of the middle slice:
    input | generated CT | reference CT (when present) | absolute error (when present, with the
    case's MAE over the slice in its title), CT panels in a fixed HU window with colour bars.

    Args:
        output_dir: where the PNGs go.
        image_key, pred_key, label_key: input, generated and reference (both HU) keys.
        input_is_ct: the input is a CT in HU (sparse-view CT: its FBP), shown in the CT window.
        titles: the four panel titles.
    """

    def __init__(self, output_dir: str | os.PathLike, image_key: str = "image", pred_key: str = "pred", label_key: str = "label",
                 input_is_ct: bool = False, titles: Sequence[str] = ("MR (input)", "synthetic CT", "CT (reference)", "|sCT - CT|")) -> None:
        self.output_dir = os.fspath(output_dir)
        self.image_key, self.pred_key, self.label_key = image_key, pred_key, label_key
        self.input_is_ct, self.titles = input_is_ct, tuple(titles)

    def __call__(self, data: dict) -> dict:
        image = data[self.image_key]
        meta = getattr(image, "meta", {}) or {}
        stem = case_stem(str(meta.get("filename_or_obj", "case")))
        pred = middle_slice(data[self.pred_key]).astype(np.float64)
        tiles = [(self.titles[0], middle_slice(image).astype(np.float64), "hu" if self.input_is_ct else "grey"),
                 (self.titles[1], pred, "hu")]
        if hasattr(data.get(self.label_key), "shape"):
            ref = middle_slice(data[self.label_key]).astype(np.float64)
            error = np.abs(pred - ref)
            tiles += [(self.titles[2], ref, "hu"), (f"{self.titles[3]} (mean {error.mean():.0f} HU)", error, "error")]
        translation_figure(os.path.join(self.output_dir, f"{stem}_preview.png"), tiles, suptitle=f"{stem}, middle slice")
        return data
