"""BIDS JSON sidecars that agree with dcm2niix's field names, units and axis conventions.

Times are in seconds, numbers carry dcm2niix's 6 significant digits, and axis-dependent
fields (``PhaseEncodingDirection``) refer to the voxel axes that :mod:`.volume` writes.
Vendor specifics come from the Siemens CSA header and the GE protocol data block.
"""

from __future__ import annotations

import gzip
import re

import numpy as np

import ldmonai
from ldmonai.prep.dicom.csa import read_csa
from ldmonai.prep.dicom.header import _get, read_values
from ldmonai.prep.dicom.series import Series
from ldmonai.prep.dicom.volume import Volume

MANUFACTURERS = (("SIEMENS", "Siemens"), ("GE", "GE"), ("PHILIPS", "Philips"), ("TOSHIBA", "Canon"),
                 ("CANON", "Canon"), ("UIH", "UIH"), ("HITACHI", "Hitachi"), ("BRUKER", "Bruker"))

# (BIDS key, DICOM keyword, scale): copied when present, in this order.
GENERIC = [
    ("Modality", "Modality", None), ("MagneticFieldStrength", "MagneticFieldStrength", None),
    ("ImagingFrequency", "ImagingFrequency", None), ("Manufacturer", "Manufacturer", None),
    ("ManufacturersModelName", "ManufacturerModelName", None), ("InstitutionName", "InstitutionName", None),
    ("InstitutionalDepartmentName", "InstitutionalDepartmentName", None),
    ("DeviceSerialNumber", "DeviceSerialNumber", None), ("StationName", "StationName", None),
    ("BodyPart", "BodyPartExamined", None), ("PatientPosition", "PatientPosition", None),
    ("ProcedureStepDescription", "PerformedProcedureStepDescription", None),
    ("SoftwareVersions", "SoftwareVersions", None), ("MRAcquisitionType", "MRAcquisitionType", None),
    ("StudyDescription", "StudyDescription", None), ("SeriesDescription", "SeriesDescription", None),
    ("ProtocolName", "ProtocolName", None), ("ScanningSequence", "ScanningSequence", None),
    ("SequenceVariant", "SequenceVariant", None), ("ScanOptions", "ScanOptions", None),
    ("SequenceName", "SequenceName", None), ("SeriesNumber", "SeriesNumber", None),
    ("AcquisitionNumber", "AcquisitionNumber", None), ("SliceThickness", "SliceThickness", None),
    ("SpacingBetweenSlices", "SpacingBetweenSlices", None), ("SAR", "SAR", None),
    ("EchoTime", "EchoTime", 1e-3), ("RepetitionTime", "RepetitionTime", 1e-3),
    ("InversionTime", "InversionTime", 1e-3), ("FlipAngle", "FlipAngle", None),
    ("PercentPhaseFOV", "PercentPhaseFieldOfView", None), ("PercentSampling", "PercentSampling", None),
    ("EchoTrainLength", "EchoTrainLength", None), ("PixelBandwidth", "PixelBandwidth", None),
    ("ReceiveCoilName", "ReceiveCoilName", None),
    ("KVP", "KVP", None), ("XRayExposure", "Exposure", None), ("XRayTubeCurrent", "XRayTubeCurrent", None),
    ("ConvolutionKernel", "ConvolutionKernel", None), ("ReconstructionDiameter", "ReconstructionDiameter", None),
    ("GantryDetectorTilt", "GantryDetectorTilt", None), ("PhotometricInterpretation", "PhotometricInterpretation", None),
]


def sig6(x: float):
    """dcm2niix prints numbers with C's %g: six significant digits, ints without a point."""
    y = float(f"{float(x):.6g}")
    return int(y) if y.is_integer() and abs(y) < 2**53 else y


def _json_value(value, scale=None):
    if isinstance(value, tuple):
        if all(isinstance(v, (int, float)) for v in value):
            return [sig6(v * scale if scale else v) for v in value]
        return "\\".join(str(v) for v in value)
    if isinstance(value, (int, float)):
        return sig6(value * scale if scale else value)
    return str(value).strip()


def manufacturer_name(raw: str | None) -> str | None:
    if not raw:
        return None
    upper = raw.upper()
    for key, name in MANUFACTURERS:
        if upper.startswith(key) or f" {key}" in upper:
            return name
    return raw.strip()


def image_type(values: tuple, kind: str, modality: str | None) -> list[str]:
    """ImageType as dcm2niix writes it: split on '\\' and '_', with the MR image kind appended."""
    out: list[str] = []
    for v in values:
        out.extend(p for p in str(v).split("_") if p)
    if modality == "MR" and not {"MAGNITUDE", "PHASE", "REAL", "IMAGINARY"} & {s.upper() for s in out}:
        out.append(kind)
    return out


def _clock(value: str | None) -> str | None:
    if not value:
        return None
    m = re.match(r"^(\d{2}):?(\d{2}):?(\d{2})(\.\d+)?$", str(value).strip())
    if not m:
        return str(value)
    frac = (m.group(4) or ".0")[1:]
    return f"{m.group(1)}:{m.group(2)}:{m.group(3)}.{(frac + '000000')[:6]}"


# ----------------------------------------------------------------------------- vendors
def _mosaic_times(volume_slices: list, csa: dict | None = None) -> list[float] | None:
    """Slice times (ms) of one volume from its CSA MosaicRefAcqTimes, in output slice order.

    ``csa`` is the volume file's parsed CSA header when the caller already has it.
    """
    if not volume_slices:
        return None
    csa = read_csa(volume_slices[0][0].path) if csa is None else csa
    times = csa.get("tags", {}).get("MosaicRefAcqTimes", {}).get("items") or []
    tiles = [f.tile for _, f in volume_slices]
    if not times or len(set(tiles)) != len(tiles) or not all(0 <= t < len(times) for t in tiles):
        return None
    return [float(times[t]) for t in tiles]


def _siemens(volume: Volume, out: dict) -> bool | None:
    """Slice timing from the CSA header; returns PhaseEncodingDirectionPositive if present.

    Like dcm2niix, the second volume's times win when they span longer than the first's:
    some Siemens sequences report the first volume with single-band or truncated timing.
    """
    csa = read_csa(volume.slices[0][0].path) if volume.slices else {}
    if not csa:
        return None
    times = _mosaic_times(volume.slices, csa)
    later = _mosaic_times(volume.second)
    if times and later and len(later) == len(times) and np.ptp(later) > np.ptp(times) + 1e-6:
        times = later
    if times:
        lowest = min(times)  # CSA can report negative times; BIDS counts from the first slice
        out["SliceTiming"] = [sig6((t - lowest) / 1000.0) for t in times]
    pos = csa.get("tags", {}).get("PhaseEncodingDirectionPositive", {}).get("items") or []
    return bool(int(pos[0])) if pos else None


GE_PROTOCOL_BLOCK = 0x0025101B
SIDECAR_KEYS = [kw for _, kw, _ in GENERIC] + ["AcquisitionTime", "InPlanePhaseEncodingDirection",
                                              GE_PROTOCOL_BLOCK]


def ge_protocol_block(block) -> dict:
    """Key/value pairs of GE's gzip-compressed protocol data block (0025,101B), given its bytes."""
    if not isinstance(block, bytes) or len(block) < 8:
        return {}
    try:
        text = gzip.decompress(block[4:]).decode("latin-1")
    except (OSError, EOFError):
        return {}
    pairs = {}
    for line in text.splitlines():
        m = re.match(r'^(\S+)\s+"(.*)"\s*$', line.strip())
        if m:
            pairs[m.group(1)] = m.group(2)
    return pairs


def _ge(vals: dict, volume: Volume, out: dict) -> bool | None:
    pdb = ge_protocol_block(vals.get(GE_PROTOCOL_BLOCK))
    if not pdb:
        return None
    view = pdb.get("VIEWORDER")
    if view is not None:
        out["PhaseEncodingPolarityGE"] = "Flipped" if view == "1" else "Unflipped"
    tr = _get(vals, "RepetitionTime")
    n = len(volume.slices)
    order = pdb.get("SLICEORDER")
    if tr and n > 1 and order in ("0", "1") and pdb.get("GROUP", "0") in ("0", "1"):
        # Slices are prescribed from the first scan location in InstanceNumber order;
        # interleaved acquisitions take every other prescribed slice, then the rest.
        numbers = [h.tags.get("InstanceNumber") or 0 for h, _ in volume.slices]
        prescribed = np.argsort(np.argsort(numbers, kind="stable"), kind="stable")
        if order == "1":
            half = (n + 1) // 2
            rank = [p // 2 if p % 2 == 0 else half + p // 2 for p in prescribed]
        else:
            rank = list(prescribed)
        out["SliceTiming"] = [sig6(r * float(tr) / 1000.0 / n) for r in rank]
    return None if view is None else view != "1"


def build_sidecar(series: Series, volume: Volume) -> dict:
    """The BIDS sidecar of one converted series."""
    vals = read_values(series.first.path, SIDECAR_KEYS)
    out: dict = {}
    modality = _get(vals, "Modality")
    for key, kw, scale in GENERIC:
        value = _get(vals, kw)
        if value is None:
            continue
        out[key] = _json_value(value, scale)
    if "Manufacturer" in out:
        out["Manufacturer"] = manufacturer_name(out["Manufacturer"])
    if series.tags.get("ImageType"):
        out["ImageType"] = image_type(series.tags["ImageType"], series.first.image_kind, modality)
    if _get(vals, "AcquisitionTime"):
        out["AcquisitionTime"] = _clock(_get(vals, "AcquisitionTime"))
    echo = series.tags.get("EchoNumbers")
    if "_e" in series.suffix and echo is not None:
        out["EchoNumber"] = int(echo[0] if isinstance(echo, tuple) else echo)

    positive = None
    vendor = out.get("Manufacturer")
    if vendor == "Siemens":
        positive = _siemens(volume, out)
    elif vendor == "GE":
        positive = _ge(vals, volume, out)

    in_plane = _get(vals, "InPlanePhaseEncodingDirection")
    if modality == "MR" and in_plane in ("ROW", "COL"):
        axis = "i" if in_plane == "ROW" else "j"
        if positive is None:
            out["PhaseEncodingAxis"] = axis
        else:
            # j runs against DICOM rows in our layout, so its polarity flips.
            negative = (not positive) if axis == "i" else positive
            out["PhaseEncodingDirection"] = axis + ("-" if negative else "")
        out["InPlanePhaseEncodingDirectionDICOM"] = in_plane
    if "SliceTiming" not in out and volume.data.ndim == 4 and len(volume.slices) > 1:
        times = [_acq_seconds(h.tags.get("AcquisitionTime")) for h, _ in volume.slices]
        if all(t is not None for t in times) and len(set(times)) > 1:
            t0 = min(times)
            out["SliceTiming"] = [sig6(t - t0) for t in times]

    orientation = series.first.frames[0].orientation if series.first.frames else None
    if orientation and series.first.has_geometry:
        out["ImageOrientationPatientDICOM"] = [sig6(v) for v in orientation]
    out.update({k: v for k, v in volume.notes.items() if k != "Color"})
    out["ConversionSoftware"] = "ldmonai"
    out["ConversionSoftwareVersion"] = ldmonai.__version__
    return out


def _acq_seconds(value) -> float | None:
    m = re.match(r"^(\d{2}):?(\d{2}):?(\d{2}(?:\.\d+)?)$", str(value or "").strip())
    if not m:
        return None
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))


__all__ = ["build_sidecar", "ge_protocol_block", "image_type", "manufacturer_name", "sig6"]
