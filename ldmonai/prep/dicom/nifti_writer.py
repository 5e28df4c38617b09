"""The converter's NIfTI-1 output, written without importing nibabel.

Importing nibabel takes about 0.27 s here, because ``nibabel.nifti1`` imports pydicom for its
DICOM extension. That is most of dcm2niix's whole run on the dcm_qa_nih inputs, paid again by
every converter process. The converter writes one kind of file only: a single ``.nii`` or
``.nii.gz`` of 3D or 4D voxels whose qform and sform both hold the affine derived from DICOM.
Its 348-byte header is therefore filled here, field for field as nibabel fills it;
``tests/test_convert_elements.py`` reads the output back with nibabel and SimpleITK and
compares it with nibabel's own file for the same volume.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

HEADER = np.dtype([
    ("sizeof_hdr", "<i4"), ("data_type", "S10"), ("db_name", "S18"), ("extents", "<i4"),
    ("session_error", "<i2"), ("regular", "S1"), ("dim_info", "u1"), ("dim", "<i2", (8,)),
    ("intent_p1", "<f4"), ("intent_p2", "<f4"), ("intent_p3", "<f4"), ("intent_code", "<i2"),
    ("datatype", "<i2"), ("bitpix", "<i2"), ("slice_start", "<i2"), ("pixdim", "<f4", (8,)),
    ("vox_offset", "<f4"), ("scl_slope", "<f4"), ("scl_inter", "<f4"), ("slice_end", "<i2"),
    ("slice_code", "u1"), ("xyzt_units", "u1"), ("cal_max", "<f4"), ("cal_min", "<f4"),
    ("slice_duration", "<f4"), ("toffset", "<f4"), ("glmax", "<i4"), ("glmin", "<i4"),
    ("descrip", "S80"), ("aux_file", "S24"), ("qform_code", "<i2"), ("sform_code", "<i2"),
    ("quatern_b", "<f4"), ("quatern_c", "<f4"), ("quatern_d", "<f4"), ("qoffset_x", "<f4"),
    ("qoffset_y", "<f4"), ("qoffset_z", "<f4"), ("srow_x", "<f4", (4,)), ("srow_y", "<f4", (4,)),
    ("srow_z", "<f4", (4,)), ("intent_name", "S16"), ("magic", "S4"),
])
assert HEADER.itemsize == 348
VOX_OFFSET = 352  # header plus the 4-byte "no extensions" flag
DATATYPES = {np.dtype(k): v for k, v in {
    "u1": 2, "<i2": 4, "<i4": 8, "<f4": 16, "<f8": 64, "i1": 256, "<u2": 512, "<u4": 768, "<i8": 1024,
    "<u8": 1280}.items()}
RGB24 = 128
SCANNER_ANAT = 1
UNITS_MM_SEC = 2 | 8


def quaternion(affine: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """qform parameters of a 4x4 affine: ``(quatern b, c, d), qfac, voxel sizes``.

    Like nibabel's ``set_qform``: the rotation is the nearest orthonormal matrix to the
    affine's normalised columns, a left-handed frame flips the third axis (qfac -1), and the
    quaternion is chosen with a non-negative real part.
    """
    rzs = np.asarray(affine, float)[:3, :3]
    zooms = np.sqrt((rzs ** 2).sum(axis=0))
    rot = rzs / np.where(zooms == 0, 1.0, zooms)
    qfac = 1.0
    if np.linalg.det(rot) < 0:
        rot[:, 2] *= -1
        qfac = -1.0
    u, _, vt = np.linalg.svd(rot)
    rot = u @ vt
    # Shepperd's method: divide by the largest of the four candidate terms for stability.
    trace = np.trace(rot)
    cands = [trace, rot[0, 0], rot[1, 1], rot[2, 2]]
    k = int(np.argmax(cands))
    if k == 0:
        w = np.sqrt(1.0 + trace) / 2
        q = [w, (rot[2, 1] - rot[1, 2]) / (4 * w), (rot[0, 2] - rot[2, 0]) / (4 * w), (rot[1, 0] - rot[0, 1]) / (4 * w)]
    elif k == 1:
        x = np.sqrt(1.0 + rot[0, 0] - rot[1, 1] - rot[2, 2]) / 2
        q = [(rot[2, 1] - rot[1, 2]) / (4 * x), x, (rot[0, 1] + rot[1, 0]) / (4 * x), (rot[0, 2] + rot[2, 0]) / (4 * x)]
    elif k == 2:
        y = np.sqrt(1.0 - rot[0, 0] + rot[1, 1] - rot[2, 2]) / 2
        q = [(rot[0, 2] - rot[2, 0]) / (4 * y), (rot[0, 1] + rot[1, 0]) / (4 * y), y, (rot[1, 2] + rot[2, 1]) / (4 * y)]
    else:
        z = np.sqrt(1.0 - rot[0, 0] - rot[1, 1] + rot[2, 2]) / 2
        q = [(rot[1, 0] - rot[0, 1]) / (4 * z), (rot[0, 2] + rot[2, 0]) / (4 * z), (rot[1, 2] + rot[2, 1]) / (4 * z), z]
    q = np.asarray(q)
    if q[0] < 0:
        q = -q
    return q[1:], qfac, zooms


def nifti1_header(data: np.ndarray, affine: np.ndarray, *, rgb: bool = False, tr: float | None = None,
                  slope: float = 1.0, intercept: float = 0.0, descrip: bytes = b"") -> bytes:
    """The 352 bytes before the voxels: header and the empty extension flag.

    Args:
        data: ``(x, y, z[, t])`` voxels, or ``(x, y, z, 3)`` uint8 with ``rgb``.
        affine: voxel to RAS+ millimetres; stored as qform and sform, both "scanner".
        tr: seconds between volumes, stored as the 4th voxel size of 4D data.
        slope, intercept: scaling that readers apply to the stored values.
        descrip: up to 80 bytes of free text.
    """
    shape = data.shape[:-1] if rgb else data.shape
    hdr = np.zeros((), HEADER)
    hdr["sizeof_hdr"] = 348
    hdr["dim"] = [len(shape), *shape, *[1] * (7 - len(shape))]
    hdr["datatype"], hdr["bitpix"] = (RGB24, 24) if rgb else (DATATYPES[data.dtype.newbyteorder("<")],
                                                               data.dtype.itemsize * 8)
    (b, c, d), qfac, zooms = quaternion(affine)
    pixdim = np.ones(8)
    pixdim[0], pixdim[1:4] = qfac, zooms
    if len(shape) == 4 and tr is not None:
        pixdim[4] = tr
    hdr["pixdim"] = pixdim
    hdr["vox_offset"] = VOX_OFFSET
    hdr["scl_slope"], hdr["scl_inter"] = slope, intercept
    hdr["xyzt_units"] = UNITS_MM_SEC
    hdr["descrip"] = descrip[:80]
    hdr["qform_code"] = hdr["sform_code"] = SCANNER_ANAT
    hdr["quatern_b"], hdr["quatern_c"], hdr["quatern_d"] = b, c, d
    hdr["qoffset_x"], hdr["qoffset_y"], hdr["qoffset_z"] = np.asarray(affine, float)[:3, 3]
    hdr["srow_x"], hdr["srow_y"], hdr["srow_z"] = np.asarray(affine, float)[:3]
    hdr["magic"] = b"n+1"
    return hdr.tobytes() + b"\x00" * 4


def voxel_bytes(data: np.ndarray, rgb: bool = False) -> bytes:
    """Voxels in NIfTI order (first axis fastest), little endian; RGB triplets stay together."""
    if rgb:
        # RGB24 is 8 bits per channel whatever dtype the stacked colour volume came in
        data = np.moveaxis(data.astype(np.uint8, copy=False), -1, 0)  # channel fastest, then x, y, z
    return np.asarray(data, dtype=data.dtype.newbyteorder("<")).tobytes(order="F")


def write_nifti1(path: str | Path, data: np.ndarray, affine: np.ndarray, **header) -> None:
    """Write ``data`` to ``path``, gzip-compressed when the name ends in ``.gz``.

    ``header`` takes the keyword arguments of :func:`nifti1_header`. The write is not atomic
    by itself: callers pass a temporary path and rename it.
    """
    rgb = bool(header.get("rgb"))
    payload = nifti1_header(data, affine, **header), voxel_bytes(data, rgb)
    with open(path, "wb") as raw:
        if not str(path).endswith(".gz"):
            raw.writelines(payload)
            return
        # Level 1 and no time stamp: nibabel's speed trade-off, and the same input gives the same bytes.
        with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as fh:
            fh.writelines(payload)


__all__ = ["HEADER", "nifti1_header", "quaternion", "voxel_bytes", "write_nifti1"]
