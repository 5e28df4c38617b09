"""Write small synthetic DICOM series with known geometry and voxel values.

Used by the tests to make cases that no public sample covers: oblique stacks, gantry tilt,
missing slices, multi-echo, enhanced multi-frame objects and hostile tag values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"


def _base(tags: dict, sop_class=MRImageStorage) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.Modality = "MR"
    ds.Manufacturer = "ACME"
    ds.PatientID = "P001"
    ds.PatientName = "Test^Patient"
    ds.StudyInstanceUID = tags.pop("StudyInstanceUID", generate_uid())
    ds.SeriesInstanceUID = tags.pop("SeriesInstanceUID", generate_uid())
    ds.SeriesNumber = 3
    ds.SeriesDescription = "T1 axial"
    ds.RepetitionTime = 2000
    ds.EchoTime = 10
    ds.FlipAngle = 90
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    for key, value in tags.items():
        setattr(ds, key, value)
    return ds


def make_volume(shape=(6, 8, 10), nt=1, seed=0) -> np.ndarray:
    """Distinct int16 values, shape ``(nt, slices, rows, cols)``."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 3000, size=(nt,) + tuple(shape), dtype=np.int16)


def write_series(folder, data: np.ndarray, spacing=(0.9, 1.1), dz=2.5,
                 orientation=(1, 0, 0, 0, 1, 0), origin=(-10.0, -20.0, 5.0), tilt_step=(0.0, 0.0),
                 tags: dict | None = None, shuffle=True, suffix=".dcm", skip: set | None = None) -> list[Path]:
    """Classic single-frame files for ``data`` of shape ``(nt, slices, rows, cols)``.

    Slice ``k`` sits at ``origin + k*dz*normal + k*(tilt_step along row and column axes)``.
    ``skip`` leaves out ``(t, k)`` pairs (to make incomplete series).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tags = dict(tags or {})
    series_uid = tags.pop("SeriesInstanceUID", generate_uid())
    study_uid = tags.pop("StudyInstanceUID", generate_uid())
    row_cos, col_cos = np.array(orientation[:3], float), np.array(orientation[3:], float)
    normal = np.cross(row_cos, col_cos)
    nt, nz, rows, cols = data.shape
    order = [(t, k) for t in range(nt) for k in range(nz)]
    if shuffle:
        np.random.default_rng(1).shuffle(order)
    paths = []
    for n, (t, k) in enumerate(order):
        if skip and (t, k) in skip:
            continue
        ds = _base(dict(tags, SeriesInstanceUID=series_uid, StudyInstanceUID=study_uid))
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        pos = np.asarray(origin, float) + k * dz * normal + k * (tilt_step[0] * row_cos + tilt_step[1] * col_cos)
        ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
        ds.PixelSpacing = [str(spacing[0]), str(spacing[1])]
        ds.SliceThickness = str(dz)
        ds.Rows, ds.Columns = rows, cols
        ds.InstanceNumber = t * nz + k + 1
        ds.AcquisitionNumber = t + 1
        ds.PixelData = data[t, k].astype("<i2").tobytes()
        path = folder / f"IM{n:04d}{suffix}"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_enhanced(path, data: np.ndarray, spacing=(0.9, 1.1), dz=2.5, orientation=(1, 0, 0, 0, 1, 0),
                   origin=(-10.0, -20.0, 5.0), tags: dict | None = None) -> Path:
    """One enhanced multi-frame MR object holding ``data`` ``(nt, slices, rows, cols)``,
    frames in a scrambled order so that the converter must use the functional groups."""
    nt, nz, rows, cols = data.shape
    ds = _base(dict(tags or {}), sop_class=ENHANCED_MR)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Rows, ds.Columns = rows, cols
    ds.NumberOfFrames = nt * nz
    normal = np.cross(orientation[:3], orientation[3:])
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [str(spacing[0]), str(spacing[1])]
    measures.SliceThickness = str(dz)
    orient = Dataset()
    orient.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PlaneOrientationSequence = Sequence([orient])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    order = [(t, k) for t in range(nt) for k in range(nz)]
    np.random.default_rng(2).shuffle(order)
    frames, pixels = [], []
    for t, k in order:
        item = Dataset()
        plane = Dataset()
        plane.ImagePositionPatient = [f"{v:.6f}" for v in np.asarray(origin, float) + k * dz * normal]
        content = Dataset()
        content.TemporalPositionIndex = t + 1
        content.DimensionIndexValues = [t + 1, k + 1]
        item.PlanePositionSequence = Sequence([plane])
        item.FrameContentSequence = Sequence([content])
        frames.append(item)
        pixels.append(data[t, k].astype("<i2"))
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = np.stack(pixels).tobytes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def expected_affine(shape_rc, spacing, dz, orientation, origin) -> np.ndarray:
    """The RAS affine the converter should write: i along columns, j along reversed rows."""
    rows = shape_rc[0]
    row_cos, col_cos = np.array(orientation[:3], float), np.array(orientation[3:], float)
    normal = np.cross(row_cos, col_cos)
    lps = np.eye(4)
    lps[:3, 0] = spacing[1] * row_cos
    lps[:3, 1] = -spacing[0] * col_cos
    lps[:3, 2] = dz * normal
    lps[:3, 3] = np.asarray(origin, float) + (rows - 1) * spacing[0] * col_cos
    return np.diag([-1, -1, 1, 1]) @ lps


def expected_array(data: np.ndarray) -> np.ndarray:
    """``(nt, slices, rows, cols)`` -> NIfTI layout ``(cols, rows reversed, slices[, nt])``."""
    out = np.transpose(data, (3, 2, 1, 0))[:, ::-1]
    return out[..., 0] if out.shape[3] == 1 else out


def corrupt_copy(src, dst, keep_bytes: int | None = None, garbage_at: int | None = None) -> Path:
    raw = Path(src).read_bytes()
    if keep_bytes is not None:
        raw = raw[:keep_bytes]
    if garbage_at is not None:
        raw = raw[:garbage_at] + b"\xff" * 64 + raw[garbage_at + 64:]
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    Path(dst).write_bytes(raw)
    return Path(dst)

