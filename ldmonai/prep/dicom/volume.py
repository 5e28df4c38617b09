"""Stack the frames of one series into a NIfTI-ready array and its RAS affine.

Voxel layout follows dcm2niix, so that sidecar axes (``PhaseEncodingDirection``) mean the
same thing: ``i`` runs along DICOM columns, ``j`` along DICOM rows reversed, and ``k`` along
the slice normal in increasing position. A 4th axis holds repeated acquisitions (time).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from ldmonai.errors import LdmonaiError
from ldmonai.prep.dicom.csa import read_csa
from ldmonai.prep.dicom.header import NATIVE_SYNTAXES, FileHeader, Frame
from ldmonai.prep.dicom.series import Series

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class Volume:
    """A stacked series.

    Attributes:
        data: ``(columns, rows, slices)`` or ``(columns, rows, slices, volumes)``.
        affine: 4x4 voxel-to-RAS+ (NIfTI) affine in millimetres.
        slices: for each output slice ``k``, the ``(header, frame)`` of its first time point.
        second: the same for the second time point (empty for 3D series); sidecars use it
            where vendors report the first volume's timing wrongly.
        slope, intercept: scaling to store in the NIfTI header (raw data kept as integers).
        notes: what was done beyond a plain stack (tilt correction), for the sidecar.
    """

    data: np.ndarray
    affine: np.ndarray
    slices: list
    second: list = field(default_factory=list)
    slope: float = 1.0
    intercept: float = 0.0
    notes: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- pixels
def _decode_with_pydicom(header: FileHeader) -> np.ndarray:
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asarray(pydicom.dcmread(header.path, force=True).pixel_array)
    except Exception as exc:  # decoder plugins raise many types; all mean the same to a user
        name = pydicom.uid.UID(header.pixel["syntax"]).name
        fix = ("install a decoder for this transfer syntax (pip install pylibjpeg pylibjpeg-libjpeg "
               "pylibjpeg-openjpeg, or pyjpegls for JPEG-LS), or decompress with 'gdcmconv --raw'")
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise LdmonaiError(f"pixel data could not be decoded ({name}): {detail}", header.path, fix) from None


def read_pixels(header: FileHeader) -> np.ndarray:
    """All frames of one file as ``(frames, rows, columns)`` (``(..., samples)`` for colour)."""
    px = header.pixel
    n_frames, rows, cols = px["n_frames"], header.rows, header.cols
    # Native single-channel data is read straight from its file offset; everything else
    # (compressed, colour, signed data narrower than its container) goes through pydicom.
    fast = (px["offset"] is not None and px["samples"] == 1 and px["bits"] in (8, 16, 32)
            and (not px["signed"] or header.tags.get("BitsStored") in (None, px["bits"])))
    if not fast:
        arr = _decode_with_pydicom(header)
        if px["samples"] == 1 and arr.ndim == 2:
            arr = arr[None]
        elif px["samples"] > 1 and arr.ndim == 3:
            arr = arr[None]
        if arr.shape[0] != n_frames or arr.shape[1:3] != (rows, cols):
            raise LdmonaiError(f"decoded pixel array has shape {arr.shape}, header says {n_frames}x{rows}x{cols}",
                               header.path, "the file is inconsistent; re-export it")
        return arr
    endian = NATIVE_SYNTAXES[px["syntax"]][0]
    dtype = np.dtype(f"{endian}{'i' if px['signed'] else 'u'}{px['bits'] // 8}")
    count = n_frames * rows * cols
    if px["length"] < count * dtype.itemsize:
        raise LdmonaiError(
            f"truncated pixel data: {px['length']} bytes for {n_frames}x{rows}x{cols} {dtype.itemsize * 8}-bit pixels",
            header.path, "the file was cut short in transfer; re-export it or remove it")
    try:
        arr = np.fromfile(header.path, dtype=dtype, count=count, offset=px["offset"])
    except (OSError, ValueError) as exc:
        raise LdmonaiError(f"pixel data could not be read ({exc})", header.path, "re-export the file") from None
    if arr.size < count:
        raise LdmonaiError(f"truncated pixel data: file ends after {arr.size} of {count} pixels",
                           header.path, "the file was cut short in transfer; re-export it or remove it")
    stored = header.tags.get("BitsStored")
    if stored and stored < px["bits"] and not px["signed"]:
        arr &= np.array((1 << int(stored)) - 1, dtype=dtype)  # drop overlay bits above BitsStored
    return arr.astype(dtype.newbyteorder("="), copy=False).reshape(n_frames, rows, cols)


# ----------------------------------------------------------------------------- mosaics
def expand_mosaic(series: Series) -> tuple[int, int]:
    """Replace each mosaic file's single frame by one frame per tile. Returns the tile size.

    Siemens stores a mosaic's ImagePositionPatient as if the whole mosaic were one slice; the
    first tile's true position is shifted by half the unused mosaic extent in each direction.
    """
    first = series.first
    tags = read_csa(first.path).get("tags", {})
    try:
        n_tiles = int(tags["NumberOfImagesInMosaic"]["items"][0])
        snv = tags.get("SliceNormalVector", {}).get("items") or None
        snv = [float(v) for v in snv] if snv and len(snv) == 3 else None
    except (KeyError, IndexError, TypeError, ValueError):
        raise LdmonaiError("Siemens mosaic without a readable CSA image header", first.path,
                           "the private Siemens header (0029,1010) is missing or damaged; re-export with private tags kept") from None
    grid = int(math.ceil(math.sqrt(n_tiles)))
    tile_rows, tile_cols = first.rows // grid, first.cols // grid
    dz = first.tags.get("SpacingBetweenSlices") or first.tags.get("SliceThickness") or 1.0
    for h in series.headers:
        f0 = h.frames[0]
        row_cos, col_cos = np.asarray(f0.orientation[:3]), np.asarray(f0.orientation[3:])
        normal = np.asarray(snv, float) if snv is not None else np.cross(row_cos, col_cos)
        corner = (np.asarray(f0.position)
                  + (h.rows - tile_rows) / 2.0 * f0.spacing[0] * col_cos
                  + (h.cols - tile_cols) / 2.0 * f0.spacing[1] * row_cos)
        h.frames = [Frame(0, k, tuple(corner + k * float(dz) * normal), f0.orientation, f0.spacing, f0.order,
                          f0.slope, f0.intercept) for k in range(n_tiles)]
    series.tags["MosaicTiles"] = n_tiles
    return tile_rows, tile_cols


def _tile(pixels: np.ndarray, frame: Frame, shape: tuple[int, int]) -> np.ndarray:
    plane = pixels[frame.frame]
    if frame.tile < 0:
        return plane
    tr, tc = shape
    grid = plane.shape[1] // tc
    r, c = divmod(frame.tile, grid)
    return plane[r * tr:(r + 1) * tr, c * tc:(c + 1) * tc]


# ----------------------------------------------------------------------------- stacking
def _shift_plane(plane: np.ndarray, drow: float, dcol: float, fill) -> np.ndarray:
    """Bilinear shift of a 2D plane by (drow, dcol) pixels; outside is ``fill``."""
    out = plane.astype(np.float64)
    for axis, shift in ((0, drow), (1, dcol)):
        if abs(shift) < 1e-6:
            continue
        lo = math.floor(shift)
        frac = shift - lo
        a = np.full_like(out, fill)
        b = np.full_like(out, fill)
        n = out.shape[axis]
        for dst, s in ((a, lo), (b, lo + 1)):
            if abs(s) >= n:
                continue
            src = [slice(None)] * 2
            tgt = [slice(None)] * 2
            src[axis] = slice(max(0, -s), n - max(0, s))
            tgt[axis] = slice(max(0, s), n - max(0, -s))
            dst[tuple(tgt)] = out[tuple(src)]
        out = (1 - frac) * a + frac * b
    return out


def stack_series(series: Series) -> Volume:
    """Sort the frames of ``series`` in space and time and assemble the voxel array."""
    if any(h.mosaic for h in series.headers):
        tile_shape = expand_mosaic(series)
    else:
        tile_shape = (series.first.rows, series.first.cols)
    rows, cols = tile_shape
    where = series.folder
    items = [(h, f) for h in series.headers for f in h.frames]
    if not items:
        raise LdmonaiError("series has no image frames", where, "check that the files hold pixel data")

    ref = np.asarray(items[0][1].orientation, float)
    for h, f in items:
        if np.max(np.abs(np.asarray(f.orientation) - ref)) > 1e-3:
            raise LdmonaiError("frames of one object have different orientations", h.path,
                               "split the multi-frame object by stack before converting")
    row_cos, col_cos = ref[:3], ref[3:]
    normal = np.cross(row_cos, col_cos)
    spacing = items[0][1].spacing

    # Cluster frames by position along the normal; each cluster is one slice location.
    dist = np.array([np.dot(f.position, normal) for _, f in items])
    order = np.argsort(dist, kind="stable")
    clusters: list[list[int]] = []
    for idx in order:
        if clusters and abs(dist[idx] - dist[clusters[-1][0]]) < 0.01:
            clusters[-1].append(idx)
        else:
            clusters.append([idx])
    counts = {len(c) for c in clusters}
    if len(counts) > 1:
        short = min(clusters, key=len)
        full = max(len(c) for c in clusters)
        raise LdmonaiError(
            f"missing slices: the position at {dist[short[0]]:.2f} mm along the slice normal has {len(short)} "
            f"image(s) but others have {full}", items[short[0]][0].path,
            "some files of this series are missing; copy the complete series and convert again")
    for c in clusters:
        c.sort(key=lambda i: (items[i][1].order, items[i][0].path, items[i][1].frame))
    nz, nt = len(clusters), len(clusters[0])

    positions = np.array([items[c[0]][1].position for c in clusters], float)
    notes: dict = {}
    if nz > 1:
        gaps = np.diff(dist[[c[0] for c in clusters]])
        dz = float(np.median(gaps))
        bad = np.abs(gaps - dz) > max(0.01, 0.05 * dz)
        if bad.any():
            k = int(np.argmax(np.abs(gaps - dz)))
            raise LdmonaiError(
                f"inconsistent slice spacing: gap of {gaps[k]:.3f} mm between slices {k} and {k + 1} where the "
                f"series steps {dz:.3f} mm (a slice is missing, or the series mixes stacks)",
                items[clusters[k + 1][0]][0].path,
                "copy the complete series; if it really has variable spacing, resample it first")
        step = (positions[-1] - positions[0]) / (nz - 1)
        in_plane = step - np.dot(step, normal) * normal
        shear = float(np.linalg.norm(in_plane))
        tilt = math.degrees(math.atan2(shear, abs(float(np.dot(step, normal)))))
        if tilt > 0.05:
            notes["GantryTiltCorrected"] = round(tilt, 4)
    else:
        dz = float(series.tags.get("SliceThickness") or series.tags.get("SpacingBetweenSlices") or 1.0)
        in_plane = np.zeros(3)

    # Read every file once; a file may hold many frames.
    px = series.first.pixel
    sample = None
    cache: dict = {}
    out = None
    slopes = {(items[i][1].slope, items[i][1].intercept) for c in clusters for i in c}
    scaled = len(slopes) > 1
    for k, cluster in enumerate(clusters):
        for t, i in enumerate(cluster):
            h, f = items[i]
            if h.path not in cache:
                if len(cache) >= 64:  # bound memory on long series; files arrive roughly in order
                    cache.clear()
                cache[h.path] = read_pixels(h)
            plane = _tile(cache[h.path], f, tile_shape)
            if plane.shape[:2] != (rows, cols):
                raise LdmonaiError(f"image is {plane.shape[0]}x{plane.shape[1]} where the series is {rows}x{cols}",
                                   h.path, "the series mixes matrix sizes; convert the files separately")
            if scaled:
                plane = plane.astype(np.float32) * f.slope + f.intercept
            if out is None:
                sample = plane
                extra = plane.shape[2:]
                out = np.empty((cols, rows, nz, nt) + extra, dtype=plane.dtype)
            if notes.get("GantryTiltCorrected"):
                # Slice k was acquired displaced by k*in_plane; move its content by the same
                # amount so that every slice shares slice 0's in-plane grid.
                off = k * in_plane
                drow = float(np.dot(off, col_cos)) / spacing[0]
                dcol = float(np.dot(off, row_cos)) / spacing[1]
                fill = float(sample.min())
                shifted = _shift_plane(plane, drow, dcol, fill)
                plane = np.rint(shifted).astype(plane.dtype) if np.issubdtype(plane.dtype, np.integer) else shifted.astype(plane.dtype)
            # (rows, cols) -> (cols, rows reversed): i along columns, j along reversed rows.
            out[:, :, k, t] = np.swapaxes(plane, 0, 1)[:, ::-1]
    if out.shape[3] == 1:
        out = out[:, :, :, 0]
    if out.dtype == np.uint16 and out.size and out.max() <= np.iinfo(np.int16).max:
        out = out.astype(np.int16)  # as dcm2niix: signed storage where the values allow it

    # Tilt-corrected slices were shifted onto the grid of slice 0, so slice 0 anchors it too.
    origin = positions[0] + (rows - 1) * spacing[0] * col_cos
    lps = np.eye(4)
    lps[:3, 0] = spacing[1] * row_cos
    lps[:3, 1] = -spacing[0] * col_cos
    lps[:3, 2] = dz * normal
    lps[:3, 3] = origin
    affine = LPS_TO_RAS @ lps
    slope, intercept = (1.0, 0.0) if scaled else next(iter(slopes))
    first_slices = [items[c[0]] for c in clusters]
    second_slices = [items[c[1]] for c in clusters] if nt > 1 else []
    if sample is not None and sample.ndim == 3:
        notes["Color"] = True
    return Volume(out, affine, first_slices, second_slices, float(slope), float(intercept), notes)

