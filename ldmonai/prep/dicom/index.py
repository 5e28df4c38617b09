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
from pathlib import Path

from ldmonai.errors import LdmonaiError, UsageError
from ldmonai.prep.dicom.elements import BIG_ENDIAN, DEFLATED, IMPLICIT_LE, KEYWORDS, Elements, Truncated, \
    Unsupported, read_elements

DIRECTORY_SOP = "1.2.840.10008.1.3.10"  # a DICOMDIR: an index of other files, no image
BASE_KEYS = ("SeriesInstanceUID", "SOPClassUID", "MediaStorageSOPClassUID")
HEAD_BYTES = 16384  # the fast scan's one read: group 0x0020 lies within it in every vendor's files we have

# Byte patterns of explicit-VR little-endian elements (tag group, element, VR).
_PREFIX = b"DICM\x02\x00\x00\x00UL\x04\x00"  # the Part-10 marker, then the meta group's length element
_TRANSFER_SYNTAX = b"\x02\x00\x10\x00UI"
_STUDY_UID = b"\x20\x00\x0d\x00UI"
_SERIES_UID = b"\x20\x00\x0e\x00UI"
_SEQUENCE = b"SQ\x00\x00"  # VR SQ and its two reserved bytes, then a 4-byte length
_UN_UNDEFINED = b"UN\x00\x00\xff\xff\xff\xff"  # a sequence stored as UN: implicit VR inside
_SEQUENCE_UNDEFINED = _SEQUENCE + b"\xff\xff\xff\xff"
_SEQUENCE_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_NOT_EXPLICIT_LE = frozenset((IMPLICIT_LE, BIG_ENDIAN, *DEFLATED))
_U16, _U32 = struct.Struct("<H").unpack_from, struct.Struct("<I").unpack_from
_UID_CHARS = frozenset(b"0123456789.")


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


def _uid_value(head: bytes, pos: int) -> str | None:
    """The UI value of the explicit-VR element at ``pos`` when it is a well-formed UID."""
    if pos + 8 > len(head):
        return None
    end = pos + 8 + _U16(head, pos + 6)[0]
    value = head[pos + 8:end].rstrip(b"\x00 ")
    if end > len(head) or not 0 < len(value) <= 64 or not _UID_CHARS.issuperset(value):
        return None
    return value.decode("ascii")


def _inside_a_sequence(head: bytes, start: int, pos: int) -> bool | None:
    """Whether ``pos`` lies inside a sequence whose SQ element starts in ``[start, pos)``; None
    when that cannot be told from ``head`` (a sequence runs past it, or one is stored as UN,
    whose inside is implicit VR)."""
    if head.find(_UN_UNDEFINED, start, pos) >= 0:
        return None
    at = head.find(_SEQUENCE, start, pos)
    while at >= 0:
        if at + 8 > len(head):
            return None
        length = _U32(head, at + 4)[0]
        if length != 0xFFFFFFFF:
            end = at + 8 + length
        else:  # undefined length: the sequence delimiter that closes it, counting nested ones
            depth, end = 1, at + 8
            while depth:
                close = head.find(_SEQUENCE_END, end)
                if close < 0:
                    return None
                opened = head.find(_SEQUENCE_UNDEFINED, end, close)
                depth, end = (depth + 1, opened + 8) if opened >= 0 else (depth - 1, close + 8)
        if end > len(head):
            return None
        if at < pos < end:
            return True
        at = head.find(_SEQUENCE, at + 4, pos)
    return False


def fast_series_uid(head: bytes) -> str | None:
    """SeriesInstanceUID of a Part-10 file with an explicit-VR little-endian data set, from its first
    bytes with a few byte searches (about 10 us a file, against 90 us for the element walker);
    None whenever the answer is not certain, and the walker or pydicom then reads the file.

    Certain means: the transfer syntax (read from the meta group) is explicit VR little endian
    (native or encapsulated); the element (0020,000E) directly follows (0020,000D), StudyInstanceUID,
    which every image carries; and it lies outside every sequence that starts before it, since
    sequences (Related Series, 0008,1250, for one) may hold the same pair for another series.
    Every SQ marker counts, even one that is only a value's bytes: a false one can only make the
    answer None.
    """
    if head[128:140] != _PREFIX or len(head) < 144:
        return None
    meta_end = 144 + _U32(head, 140)[0]
    at = head.find(_TRANSFER_SYNTAX, 132, meta_end)
    if at < 0 or at + 8 > meta_end:
        return None
    syntax = _uid_value(head, at)
    if syntax is None or syntax in _NOT_EXPLICIT_LE:
        return None
    at = head.find(_SERIES_UID, meta_end)
    while at >= 0:
        study = head.rfind(_STUDY_UID, meta_end, at)
        if study >= 0 and study + 8 + _U16(head, study + 6)[0] == at:
            break
        at = head.find(_SERIES_UID, at + 4)
    if at < 0 or _inside_a_sequence(head, meta_end, at) is not False:
        return None
    return _uid_value(head, at)


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


def index_chunk(paths: list[str], keywords: list[str]) -> list[tuple[str, dict | None, dict | None, int]]:
    """``(path, tags or None, error or None, size in bytes)`` for each path: one task of the index pass.

    A file that :func:`fast_series_uid` reads gets its series UID only; :func:`complete_tags`
    later reads the template's keywords from the first file of each series. The size weighs the
    file in :func:`ldmonai.prep.dicom.convert.plan_batches` (dcm2niix's time goes with bytes).
    """
    tags = keyword_tags(list(dict.fromkeys([*BASE_KEYS, *keywords])))
    out = []
    for path in paths:
        size = 0
        try:
            fd = os.open(path, os.O_RDONLY)  # no buffered file object: a third of the per-file cost
            try:
                size = os.fstat(fd).st_size
                uid = fast_series_uid(os.read(fd, HEAD_BYTES))
            finally:
                os.close(fd)
        except OSError:
            uid = None  # read_index_tags words it
        if uid is not None:
            out.append((path, {"SeriesInstanceUID": uid}, None, size))
            continue
        try:
            out.append((path, read_index_tags(path, tags), None, size))
        except LdmonaiError as exc:
            out.append((path, None, exc.to_dict(), size))
    return out


def complete_tags(series: list["SeriesFiles"], keywords: list[str]) -> list[dict]:
    """Give each series the template's keywords, read from its first file where the fast scan
    left them out (one file a series). A file whose header cannot be read leaves its series with
    an error, as in the index pass, and the next file is tried. Returns the errors; a series left
    without files is dropped from ``series`` (in place)."""
    if not keywords:
        return []
    tags = keyword_tags(list(dict.fromkeys([*BASE_KEYS, *keywords])))
    errors = []
    for s in series:
        while s.files and not set(keywords) <= s.tags.keys():
            try:
                # a keyword the file lacks stays None (the name then says "unknown")
                s.tags = {**dict.fromkeys(keywords), "SeriesInstanceUID": s.uid,
                          **(read_index_tags(s.files[0], tags) or {})}
            except LdmonaiError as exc:
                errors.append(exc.to_dict())
                s.files.pop(0)
    series[:] = [s for s in series if s.files]
    return errors


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


class SeriesFiles:
    """The files of one DICOM series (one SeriesInstanceUID), their total size, and the tags its
    name is built from."""

    def __init__(self, uid: str, files: list | None = None, tags: dict | None = None, nbytes: int = 0):
        self.uid, self.files, self.tags = uid, files if files is not None else [], tags if tags is not None else {}
        self.nbytes = nbytes

    def __repr__(self) -> str:
        return f"SeriesFiles({self.uid!r}, {len(self.files)} files)"

    @property
    def folder(self) -> str:
        """The deepest folder that holds every file of the series (for reports)."""
        return os.path.commonpath(list({os.path.dirname(f) for f in self.files})) if self.files else ""


def group_series(records: list[tuple[str, dict, int]]) -> list[SeriesFiles]:
    """Series from ``(path, tags, size)`` records, in a deterministic order (by their first file's
    path). A file without a SeriesInstanceUID forms a series with the others of its folder that
    lack one."""
    groups: dict[str, SeriesFiles] = {}
    for path, tags, size in sorted(records, key=lambda r: r[0]):
        uid = tags.get("SeriesInstanceUID") or f"no-series-uid:{os.path.dirname(path)}"
        series = groups.setdefault(uid, SeriesFiles(uid, tags=dict(tags)))
        series.files.append(path)
        series.nbytes += size
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


__all__ = ["SeriesFiles", "chunks", "complete_tags", "fast_series_uid", "group_series", "index_chunk", "keyword_tags", "list_files",
           "looks_like_dicom", "read_index_tags"]
