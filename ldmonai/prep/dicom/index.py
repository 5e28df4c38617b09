"""Group a folder tree of DICOM files into series before dcm2niix converts them.

dcm2niix converts a whole tree in one call, one series after another. To convert series in
parallel (and to resume, and to name outputs from DICOM tags), ldmonai first needs to know
which files form which series: this index. It reads only ``SeriesInstanceUID`` and the
template's keywords from each file, with :mod:`.elements` (about 0.09 ms per file, no import
beyond the standard library); files that walker leaves out go to pydicom. Reading every file
with pydicom instead costs about 1 ms per file plus 0.2 s of import, several times dcm2niix's
own run on the dcm_qa_nih inputs, which is why the walker stays (docs/convert.md).

The index never decides how a series is split (echoes, phase, tilt, localizers): dcm2niix does
that inside each series' call, exactly as in a call on the whole tree.
"""

from __future__ import annotations

import os
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ldmonai.errors import LdmonaiError, UsageError
from ldmonai.prep.dicom.elements import KEYWORDS, Elements, Truncated, Unsupported, read_elements

DIRECTORY_SOP = "1.2.840.10008.1.3.10"  # a DICOMDIR: an index of other files, no image
BASE_KEYS = ("SeriesInstanceUID", "SOPClassUID", "MediaStorageSOPClassUID")


def keyword_tags(keywords) -> dict[str, int]:
    """``{keyword: tag}``; keywords outside the walker's table are looked up in pydicom's
    dictionary. Raises :class:`UsageError` for a keyword that DICOM does not define."""
    out = {}
    for kw in keywords:
        if kw in KEYWORDS:
            out[kw] = KEYWORDS[kw][0]
            continue
        from pydicom.datadict import tag_for_keyword

        tag = tag_for_keyword(kw)
        if tag is None:
            raise UsageError(f"name template field {{{kw}}} is not a DICOM keyword",
                             fix="use keywords such as PatientID, SeriesNumber, SeriesDescription, ProtocolName")
        out[kw] = int(tag)
    return out


def looks_like_dicom(path: str) -> bool:
    """True for files with the ``DICM`` preamble, and for preamble-less files that start with a
    group 0x0002 or 0x0008 element (old ACR-NEMA style exports, which dcm2niix also reads)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    return len(head) >= 8 and head[:2] in (b"\x02\x00", b"\x08\x00") and head[3:4] == b"\x00"


def _plain(value):
    """One string per value, the same from either reader: numbers as Python writes them (pydicom's
    DS and IS become float and int first), multiple values joined by ``_``."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "_".join(str(_plain(v)) for v in value)
    kind = type(value).__name__
    if kind in ("DSfloat", "DSdecimal"):
        value = float(value)
    elif kind == "IS":
        value = int(value)
    return None if value is None else str(value)


def _walk(path: str, tags: dict[str, int]) -> dict | None:
    """The tags by the element walker; None where pydicom has to read the file. Raises
    :class:`LdmonaiError` when the file ends inside its header (pydicom would read what is left
    without a word, and the file would be grouped without its series UID)."""
    try:
        with open(path, "rb") as fh:
            found: Elements = read_elements(fh, frozenset(tags.values()), stop_after_wanted=True)
        out = {}
        for kw, tag in tags.items():
            item = found.raw.get(tag) or found.meta.get(tag)
            if item is not None and item[0] != "SQ":
                out[kw] = _plain(found.value(tag))
        return out
    except Truncated as exc:
        raise LdmonaiError(f"truncated DICOM header ({exc})", path,
                           "the file is corrupt or truncated; re-export it or remove it from the input") from None
    except (Unsupported, UnicodeDecodeError, ValueError, struct.error):
        return None  # pydicom reads it, and words any real damage


def _pydicom(path: str, tags: dict[str, int]) -> dict:
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # per-file oddities would drown the report
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=list(tags.values()))
    out = {}
    for kw, tag in tags.items():
        elem = ds.get(tag) if tag >> 16 != 2 else getattr(ds, "file_meta", {}).get(tag)
        if elem is not None and elem.VR != "SQ":
            out[kw] = _plain(elem.value)
    return out


def read_index_tags(path: str, tags: dict[str, int]) -> dict | None:
    """The wanted tags of one file as strings; None for files that are not DICOM images.

    Raises :class:`LdmonaiError` naming the file when its header cannot be parsed.
    """
    if not looks_like_dicom(path):
        return None
    values = _walk(path, tags)
    if values is None:
        try:
            values = _pydicom(path, tags)
        except Exception as exc:  # noqa: BLE001 - pydicom's parse errors are many; all mean damage
            raise LdmonaiError(f"unreadable DICOM header ({type(exc).__name__}: {exc})", path,
                               "the file is corrupt or truncated; re-export it or remove it from the input") from None
    sop = values.get("SOPClassUID") or values.get("MediaStorageSOPClassUID")
    if {"SOPClassUID", "SeriesInstanceUID"} <= tags.keys() and not sop and not values.get("SeriesInstanceUID"):
        raise LdmonaiError("DICOM file without SOP class or series UID", path,
                           "the file is corrupt or truncated; re-export it or remove it from the input")
    return None if sop == DIRECTORY_SOP else values


def index_chunk(paths: list[str], keywords: list[str]) -> list[tuple[str, dict | None, dict | None]]:
    """``(path, tags or None, error or None)`` for each path: one task of the index pass."""
    tags = keyword_tags(list(dict.fromkeys([*BASE_KEYS, *keywords])))
    out = []
    for path in paths:
        try:
            out.append((path, read_index_tags(path, tags), None))
        except LdmonaiError as exc:
            out.append((path, None, exc.to_dict()))
    return out


def index_folders(folders: list[tuple[str, list[str]]], keywords: list[str]) -> list[tuple]:
    """The ``adjacent`` index: ``(folder, DICOM files, tags of the first, error)`` per folder.

    dcm2niix's ``-a y`` assumption (every series lies in one folder) makes a header pass over every
    file unnecessary: a file counts by its first 132 bytes, and only the first of each folder is read
    (for the name template's ``{Keyword}`` fields).
    """
    tags = keyword_tags(list(dict.fromkeys([*BASE_KEYS, *keywords])))
    out = []
    for folder, paths in folders:
        dicom = [p for p in paths if looks_like_dicom(p)]
        first, error = None, None
        for path in dicom:
            try:
                first = read_index_tags(path, tags)
            except LdmonaiError as exc:
                error = exc.to_dict()
                continue
            if first is not None:
                break
        out.append((folder, dicom, first, error))
    return out


@dataclass
class SeriesFiles:
    """The files of one DICOM series (one SeriesInstanceUID) and the tags its name is built from."""

    uid: str
    files: list = field(default_factory=list)
    tags: dict = field(default_factory=dict)

    @property
    def folder(self) -> str:
        """The deepest folder that holds every file of the series (for reports)."""
        return os.path.commonpath([os.path.dirname(f) for f in self.files]) if self.files else ""


def group_series(records: list[tuple[str, dict]]) -> list[SeriesFiles]:
    """Series in a deterministic order (by their first file's path). A file without a
    SeriesInstanceUID forms a series with the others of its folder that lack one."""
    groups: dict[str, SeriesFiles] = {}
    for path, tags in sorted(records, key=lambda r: r[0]):
        uid = tags.get("SeriesInstanceUID") or f"no-series-uid:{os.path.dirname(path)}"
        series = groups.setdefault(uid, SeriesFiles(uid, tags=dict(tags)))
        series.files.append(path)
    return list(groups.values())


def list_files(in_dir: str | os.PathLike) -> list[str]:
    """Every regular file below ``in_dir`` (any suffix, hidden ones skipped), sorted."""
    root = Path(in_dir)
    if not root.exists():
        raise UsageError("input folder does not exist", root, "check the path")
    if root.is_file():
        return [str(root)]
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith("."))
    if not out:
        raise UsageError("input folder is empty", root, "point IN_DIR at a folder that holds DICOM files")
    return out


def chunks(items: list, n: int) -> list[list]:
    """``items`` in about ``n`` contiguous pieces (order kept)."""
    size = max(1, -(-len(items) // max(1, n)))
    return [items[i:i + size] for i in range(0, len(items), size)]


__all__ = ["SeriesFiles", "chunks", "group_series", "index_chunk", "keyword_tags", "list_files",
           "looks_like_dicom", "read_index_tags"]
