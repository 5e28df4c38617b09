"""Read the part of one DICOM file that conversion needs, without its pixels.

A :class:`FileHeader` is a small, picklable summary of one file: the keys that group files
into series, the geometry of each 2D frame it holds, and where its pixel data starts. Worker
processes build these in parallel; the pixels are read later, once per series.

Files are read by :mod:`.elements` where it can, and by pydicom (imported only then) for
enhanced multi-frame objects and the rare encodings that :mod:`.elements` leaves out.
"""

from __future__ import annotations

import struct
import warnings
from dataclasses import dataclass, field

import numpy as np

from ldmonai.errors import LdmonaiError
from ldmonai.prep.dicom.elements import Elements, Truncated, Unsupported, read_elements, tags_for

# Storage classes that hold no image: directories, reports, plans, waveforms.
DIRECTORY_SOP = "1.2.840.10008.1.3.10"
NATIVE_SYNTAXES = {
    "1.2.840.10008.1.2": ("<", False),  # implicit VR little endian
    "1.2.840.10008.1.2.1": ("<", True),  # explicit VR little endian
    "1.2.840.10008.1.2.2": (">", True),  # explicit VR big endian (retired)
}
GE_IMAGE_KIND = 0x0043102F
KIND_NAMES = {0: "MAGNITUDE", 1: "PHASE", 2: "REAL", 3: "IMAGINARY"}

# Parsing only these keeps the header pass fast; everything else is read for the first
# file of each series when the sidecar is written.
HEADER_TAGS = [
    "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "SeriesNumber", "SeriesDescription",
    "ProtocolName", "PatientID", "PatientName", "StudyDate", "StudyTime", "SeriesDate",
    "AccessionNumber", "Modality", "Manufacturer", "ImageType", "EchoNumbers", "EchoTime",
    "AcquisitionNumber", "InstanceNumber", "AcquisitionTime", "TemporalPositionIdentifier",
    "TriggerTime", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
    "ImagerPixelSpacing", "SliceThickness", "SpacingBetweenSlices", "Rows", "Columns",
    "BitsAllocated", "BitsStored", "PixelRepresentation", "SamplesPerPixel",
    "PhotometricInterpretation", "RescaleSlope", "RescaleIntercept", "NumberOfFrames",
    "GantryDetectorTilt", "GridFrameOffsetVector", "PerFrameFunctionalGroupsSequence",
    "SharedFunctionalGroupsSequence", "SpecificCharacterSet", GE_IMAGE_KIND,
]
HEADER_WANTED = tags_for(HEADER_TAGS)
ENHANCED = tags_for(["PerFrameFunctionalGroupsSequence"])
# Errors of a header that pydicom could not parse: all mean a damaged file (pydicom raises
# NotImplementedError for a value representation that does not exist).
PARSE_ERRORS = (EOFError, struct.error, OSError, ValueError, KeyError, TypeError, NotImplementedError)


@dataclass(frozen=True)
class Frame:
    """One 2D image plane in patient space (DICOM LPS, millimetres).

    Attributes:
        frame: index into the file's pixel frames (0 for single-frame files).
        tile: index of the tile inside a Siemens mosaic, -1 otherwise.
        position: centre of the first transmitted pixel, ``(x, y, z)``.
        orientation: row and column direction cosines (ImageOrientationPatient).
        spacing: ``(between rows, between columns)`` (PixelSpacing order).
        order: sort key that places repeated acquisitions of one position in time.
        slope, intercept: modality rescale of this frame.
    """

    frame: int
    tile: int
    position: tuple
    orientation: tuple
    spacing: tuple
    order: tuple
    slope: float = 1.0
    intercept: float = 0.0


@dataclass
class FileHeader:
    """What one DICOM file contributes to a series."""

    path: str
    series_uid: str
    tags: dict
    rows: int
    cols: int
    pixel: dict
    frames: list = field(default_factory=list)
    mosaic: bool = False
    has_geometry: bool = True

    @property
    def image_kind(self) -> str:
        return self.tags.get("ImageKind", "MAGNITUDE")


def looks_like_dicom(path: str) -> bool:
    """True for files with the DICM preamble, and for preamble-less files that start with a
    group 0x0002 or 0x0008 element (old ACR-NEMA style exports)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    return len(head) >= 8 and head[:2] in (b"\x02\x00", b"\x08\x00") and head[3:4] == b"\x00"


def _plain(value):
    """pydicom value -> plain picklable Python (floats, ints, strings, bytes, tuples), as
    :meth:`.elements.Elements.values` gives them."""
    import pydicom

    if value is None:
        return None
    if isinstance(value, (pydicom.multival.MultiValue, list, tuple)):
        return tuple(_plain(v) for v in value)
    if isinstance(value, pydicom.valuerep.PersonName):
        return str(value)
    if isinstance(value, (pydicom.valuerep.DSfloat, pydicom.valuerep.DSdecimal)):
        return float(value)
    if isinstance(value, pydicom.valuerep.IS):
        return int(value)
    if isinstance(value, (bytes, int, float, str)):
        return value
    return str(value)


def _values(ds) -> dict:
    """Every element present in ``ds`` as plain values, keyed by keyword (private tags by Tag).

    Converting each element once is several times faster than asking pydicom for ~45
    keywords per file, most of which are absent.
    """
    out = {}
    for elem in ds:
        try:
            value = elem.value
        except Exception:  # a malformed value must not hide the rest of the header
            continue
        if elem.VR == "SQ":
            continue
        out[elem.keyword or int(elem.tag)] = _plain(value)
    return out


def _get(ds, keyword, default=None):
    """``keyword`` of a pydicom Dataset or of a :func:`_values` dict; empty counts as missing."""
    if isinstance(ds, dict):
        value = ds.get(keyword)
    else:
        try:
            elem = ds.get(keyword)
        except Exception:
            return default
        value = _plain(getattr(elem, "value", elem)) if elem is not None else None
    if value in (None, "", b"", ()):
        return default
    return value


def _image_kind(ds, image_type: tuple) -> str:
    ge_kind = _get(ds, GE_IMAGE_KIND)
    if isinstance(ge_kind, int) and ge_kind in KIND_NAMES:
        return KIND_NAMES[ge_kind]
    upper = {str(t).upper() for t in image_type}
    if upper & {"P", "PHASE"}:
        return "PHASE"
    if upper & {"R", "REAL"}:
        return "REAL"
    if upper & {"I", "IMAGINARY"}:
        return "IMAGINARY"
    return "MAGNITUDE"


def _pixel_info(syntax: str, vals: dict, element: tuple | None, path: str) -> dict:
    """Where the pixel data starts, and whether we can read it with one ``np.fromfile``.

    ``element`` is ``(tag, value offset, value length)`` of the pixel data element, or None
    when the header ends without one.
    """
    info = {
        "syntax": syntax,
        "bits": int(_get(vals, "BitsAllocated", 16)),
        "signed": int(_get(vals, "PixelRepresentation", 0)) == 1,
        "samples": int(_get(vals, "SamplesPerPixel", 1)),
        "photometric": _get(vals, "PhotometricInterpretation", "MONOCHROME2"),
        "n_frames": int(_get(vals, "NumberOfFrames", 1) or 1),
        "offset": None,
        "length": None,
    }
    if syntax not in NATIVE_SYNTAXES:
        # Compressed or deflated: pydicom decodes the whole object later, and for a deflated
        # stream the file position says nothing about where the pixels are.
        info["encapsulated"] = True
        return info
    if element is None:
        raise LdmonaiError("no pixel data: the file ends before the image", path,
                           "re-export the series from the scanner or PACS; the file is truncated")
    tag, value_at, length = element
    if tag != 0x7FE00010:
        return info  # float/double pixel data: let pydicom decode
    info["encapsulated"] = length == 0xFFFFFFFF
    if not info["encapsulated"]:
        info["offset"], info["length"] = value_at, length
    return info


def _pixel_element(fh, syntax: str) -> tuple | None:
    """The pixel data element that starts at ``fh``'s position (where pydicom stopped)."""
    pos = fh.tell()
    header = fh.read(12)
    if len(header) < 8 or syntax not in NATIVE_SYNTAXES:
        return None
    endian, explicit = NATIVE_SYNTAXES[syntax]
    group, elem = struct.unpack(endian + "HH", header[:4])
    if explicit and header[4:6] in (b"OB", b"OW", b"OF", b"UN"):
        (length,) = struct.unpack(endian + "I", header[8:12])
        value_at = pos + 12
    elif explicit:
        (length,) = struct.unpack(endian + "H", header[6:8])
        value_at = pos + 8
    else:
        (length,) = struct.unpack(endian + "I", header[4:8])
        value_at = pos + 8
    return (group << 16) | elem, value_at, length


def _walk(path: str, wanted: frozenset) -> tuple[Elements, dict] | None:
    """The wanted elements of ``path`` and their decoded values (:meth:`.Elements.values`),
    or None where pydicom has to read the file."""
    try:
        with open(path, "rb") as fh:
            elements = read_elements(fh, wanted)
        return elements, elements.values()
    except (Unsupported, Truncated, UnicodeDecodeError, ValueError, struct.error):
        return None  # pydicom reads it, and words any real damage as it always has


def read_values(path: str, keys) -> dict:
    """Keywords (and private tags) of ``path`` as plain values: ``{keyword or tag: value}``.

    Missing elements are absent from the result. Raises the errors of a damaged header
    (:data:`PARSE_ERRORS`, pydicom's InvalidDicomError).
    """
    keys = list(keys)
    walked = _walk(path, tags_for(keys))
    if walked is not None:
        found = walked[1]
    else:
        import pydicom

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = _values(pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=keys))
    asked = set(keys)  # both readers add SpecificCharacterSet, which text decoding needs
    return {k: v for k, v in found.items() if k in asked}


def _frames_enhanced(ds, path: str) -> list[Frame]:
    """Frames of an enhanced multi-frame object (functional groups), in file order."""
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
    per_frame = ds.PerFrameFunctionalGroupsSequence

    def lookup(item, seq_name, attr):
        for source in (item, shared):
            if source is not None and seq_name in source and len(source[seq_name].value):
                sub = source[seq_name][0]
                if attr in sub and sub[attr].value not in (None, ""):
                    return _plain(sub[attr].value)
        return None

    frames = []
    for index, item in enumerate(per_frame):
        position = lookup(item, "PlanePositionSequence", "ImagePositionPatient")
        orientation = lookup(item, "PlaneOrientationSequence", "ImageOrientationPatient")
        spacing = lookup(item, "PixelMeasuresSequence", "PixelSpacing")
        if position is None or orientation is None or spacing is None:
            raise LdmonaiError(
                f"multi-frame object lacks plane position, orientation or pixel spacing for frame {index + 1}",
                path, "this enhanced object has no patient geometry; it cannot be placed in 3D")
        temporal = lookup(item, "FrameContentSequence", "TemporalPositionIndex")
        dims = lookup(item, "FrameContentSequence", "DimensionIndexValues")
        slope = lookup(item, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = lookup(item, "PixelValueTransformationSequence", "RescaleIntercept")
        order = (temporal or 0, tuple(dims) if isinstance(dims, tuple) else (dims or 0,), index)
        frames.append(Frame(index, -1, tuple(position), tuple(orientation), tuple(spacing), order,
                            1.0 if slope is None else float(slope), 0.0 if intercept is None else float(intercept)))
    return frames


def _unreadable(exc: Exception, path: str) -> LdmonaiError:
    return LdmonaiError(f"unreadable DICOM header ({type(exc).__name__}: {exc})", path,
                        "the file is corrupt or truncated; re-export it or remove it from the input")


def _read_summary(path: str):
    """``(values, SOP class, transfer syntax, pixel element, pydicom Dataset or None)``.

    The Dataset is only there for enhanced multi-frame objects, whose per-frame geometry
    lives in nested sequences that the element walker does not keep.
    """
    walked = _walk(path, HEADER_WANTED)
    if walked is not None and not ENHANCED & walked[0].raw.keys():
        elements, vals = walked
        sop = _get(vals, "SOPClassUID") or elements.value("MediaStorageSOPClassUID") or None
        return vals, sop, elements.syntax, elements.pixel, None
    import pydicom
    from pydicom.errors import InvalidDicomError

    with open(path, "rb") as fh, warnings.catch_warnings():
        # pydicom warns per file about recoverable oddities; a batch of thousands would
        # drown the report, where real problems surface.
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(fh, stop_before_pixels=True, force=True, specific_tags=HEADER_TAGS)
        except InvalidDicomError as exc:
            raise _unreadable(exc, path) from None
        vals = _values(ds)
        meta = getattr(ds, "file_meta", None)
        sop = _get(vals, "SOPClassUID") or (_get(meta, "MediaStorageSOPClassUID") if meta is not None else None)
        syntax = str(meta.get("TransferSyntaxUID", "1.2.840.10008.1.2")) if meta is not None else "1.2.840.10008.1.2"
        return vals, sop, syntax, _pixel_element(fh, syntax), ds


def read_header(path: str) -> FileHeader | None:
    """Summarise one file. Returns ``None`` for files that are not DICOM images (text files,
    DICOMDIR indexes, structured reports); raises :class:`LdmonaiError` for DICOM that is
    corrupt or unusable, naming the file."""
    if not looks_like_dicom(path):
        return None
    try:
        vals, sop, syntax, element, ds = _read_summary(path)
        if sop == DIRECTORY_SOP or (sop is not None and _get(vals, "Rows") is None):
            return None  # a DICOMDIR or a non-image object (report, plan): nothing to convert
        if _get(vals, "Rows") is None:
            raise LdmonaiError("DICOM file without a readable SOP class or image size", path,
                               "the header is corrupt; re-export the file or remove it from the input")
        pixel = _pixel_info(syntax, vals, element, path)
    except LdmonaiError:
        raise
    except PARSE_ERRORS as exc:
        raise _unreadable(exc, path) from None

    image_type = _get(vals, "ImageType", ()) or ()
    image_type = image_type if isinstance(image_type, tuple) else (image_type,)
    tags = {kw: _get(vals, kw) for kw in HEADER_TAGS if isinstance(kw, str) and not kw.endswith("Sequence")}
    tags["ImageType"] = image_type
    tags["ImageKind"] = _image_kind(vals, image_type)
    rows, cols = int(_get(vals, "Rows")), int(_get(vals, "Columns") or 0)
    series_uid = _get(vals, "SeriesInstanceUID") or f"no-series-uid:{path}"
    header = FileHeader(path=path, series_uid=series_uid, tags=tags, rows=rows, cols=cols, pixel=pixel)

    manufacturer = str(tags.get("Manufacturer") or "").upper()
    header.mosaic = "SIEMENS" in manufacturer and any(str(t).upper() == "MOSAIC" for t in image_type)
    order = (
        tags.get("TemporalPositionIdentifier") or 0,
        tags.get("AcquisitionNumber") or 0,
        tags.get("InstanceNumber") or 0,
        str(tags.get("AcquisitionTime") or ""),
    )
    slope = float(tags.get("RescaleSlope") or 1.0)
    intercept = float(tags.get("RescaleIntercept") or 0.0)

    try:
        if ds is not None and "PerFrameFunctionalGroupsSequence" in ds:
            header.frames = _frames_enhanced(ds, path)
            if len(header.frames) != pixel["n_frames"]:
                raise LdmonaiError(
                    f"functional groups describe {len(header.frames)} frames but NumberOfFrames is "
                    f"{pixel['n_frames']}", path, "the multi-frame object is inconsistent; re-export it")
            return header
    except LdmonaiError:
        raise
    except Exception as exc:
        raise LdmonaiError(f"malformed multi-frame functional groups ({exc})", path,
                           "re-export the object; its per-frame geometry cannot be read") from None

    position = tags.get("ImagePositionPatient")
    orientation = tags.get("ImageOrientationPatient")
    spacing = tags.get("PixelSpacing") or tags.get("ImagerPixelSpacing")
    if position is None or orientation is None or len(position) != 3 or len(orientation) != 6:
        # Projection radiographs (CR, DX) and secondary captures carry no patient geometry:
        # place them at the origin with an identity orientation, one output per image.
        header.has_geometry = False
        position, orientation = (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    spacing = tuple(spacing) if spacing and len(spacing) == 2 else (1.0, 1.0)
    n_frames = pixel["n_frames"]
    offsets = tags.get("GridFrameOffsetVector")
    if n_frames > 1:
        # Classic multi-frame (RT dose, NM, cine): frames step along the slice normal by
        # GridFrameOffsetVector where given, else they are a time series at one position.
        normal = np.cross(orientation[:3], orientation[3:])
        frames = []
        for i in range(n_frames):
            shift = float(offsets[i]) if isinstance(offsets, tuple) and len(offsets) == n_frames else 0.0
            pos = tuple(float(p) for p in np.asarray(position, float) + shift * normal)
            frames.append(Frame(i, -1, pos, tuple(orientation), spacing, order + (i,), slope, intercept))
        header.frames = frames
    else:
        header.frames = [Frame(0, -1, tuple(position), tuple(orientation), spacing, order, slope, intercept)]
    return header
