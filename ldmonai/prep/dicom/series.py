"""Group file headers into the series that become one NIfTI each.

Files are grouped by SeriesInstanceUID and then split the way dcm2niix splits: by echo,
by magnitude/phase/real/imaginary, by orientation and matrix, and by acquisition when
acquisitions cover different positions. Each split adds a dcm2niix-style name suffix
(``_e2``, ``_ph``, ``_o2``, ``_a2``) so that every output name is unique and stable.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np

from ldmonai.prep.dicom.header import FileHeader

KIND_SUFFIX = {"MAGNITUDE": "", "PHASE": "_ph", "REAL": "_real", "IMAGINARY": "_imag"}


@dataclass
class Series:
    """Files that make one output volume (3D, or 4D for time series)."""

    key: tuple
    suffix: str
    headers: list

    @property
    def first(self) -> FileHeader:
        return self.headers[0]

    @property
    def tags(self) -> dict:
        return self.first.tags

    @property
    def uid(self) -> str:
        return self.first.series_uid

    @property
    def id(self) -> str:
        """A short stable identifier (used by resume) that reveals no UID."""
        return hashlib.sha1(repr(self.key).encode()).hexdigest()[:16]

    @property
    def folder(self) -> str:
        return os.path.dirname(self.first.path)


def _split(groups: list[tuple[tuple, str, list]], keyfunc, suffixfunc) -> list[tuple[tuple, str, list]]:
    """Split every group by ``keyfunc``; only groups that really divide get a suffix."""
    out = []
    for key, suffix, headers in groups:
        buckets: dict = {}
        for h in headers:
            buckets.setdefault(keyfunc(h), []).append(h)
        if len(buckets) == 1:
            out.append((key, suffix, headers))
            continue
        for rank, (k, members) in enumerate(sorted(buckets.items(), key=lambda kv: repr(kv[0]))):
            out.append((key + (k,), suffix + suffixfunc(k, rank), members))
    return out


def _echo_key(h: FileHeader):
    echo = h.tags.get("EchoNumbers")
    if isinstance(echo, tuple):
        echo = echo[0] if echo else None
    if echo is not None:
        return int(echo)
    te = h.tags.get("EchoTime")
    return round(float(te), 3) if te is not None else 0


def _geometry_key(h: FileHeader):
    orientation = h.frames[0].orientation if h.frames else ()
    return (tuple(round(float(v), 3) for v in orientation), h.rows, h.cols)


def _positions(headers: list[FileHeader]) -> frozenset:
    out = set()
    for h in headers:
        for f in h.frames:
            normal = np.cross(f.orientation[:3], f.orientation[3:])
            out.add(round(float(np.dot(f.position, normal)), 2))
    return frozenset(out)


def drop_duplicates(headers: list[FileHeader]) -> tuple[list[FileHeader], list[dict]]:
    """Keep one file per SOPInstanceUID (copies in two folders are common in exports).

    The kept copy is the one whose pixel data is longest, so a truncated duplicate never
    replaces a complete file. Returns the kept headers and one note per dropped file.
    """
    best: dict = {}
    notes = []
    for h in sorted(headers, key=lambda h: h.path):
        uid = h.tags.get("SOPInstanceUID")
        if not uid:
            best[id(h)] = h
            continue
        kept = best.get(uid)
        if kept is None:
            best[uid] = h
            continue
        if (h.pixel.get("length") or 0) > (kept.pixel.get("length") or 0):
            best[uid], h = h, kept
        notes.append({"path": h.path, "duplicate_of": best[uid].path})
    return list(best.values()), notes


def group_series(headers: list[FileHeader]) -> list[Series]:
    """Group and split headers into series, ordered by (patient, series number, uid)."""
    by_uid: dict = {}
    for h in sorted(headers, key=lambda h: h.path):
        by_uid.setdefault(h.series_uid, []).append(h)
    groups = [((uid,), "", hs) for uid, hs in by_uid.items()]

    def echo_suffix(k, rank):
        return f"_e{k if isinstance(k, int) and k > 0 else rank + 1}"

    groups = _split(groups, _echo_key, echo_suffix)
    groups = _split(groups, lambda h: h.image_kind, lambda k, rank: KIND_SUFFIX.get(k, f"_{k.lower()}"))
    groups = _split(groups, _geometry_key, lambda k, rank: f"_o{rank + 1}")

    # Images with no patient geometry (radiographs, secondary captures) cannot be stacked:
    # each becomes its own 2D output, unless it is one multi-frame file.
    flat = []
    for key, suffix, hs in groups:
        if any(not h.has_geometry for h in hs) and len(hs) > 1:
            hs = sorted(hs, key=lambda h: (h.tags.get("InstanceNumber") or 0, h.path))
            for i, h in enumerate(hs):
                number = h.tags.get("InstanceNumber") or i + 1
                flat.append((key + (h.path,), f"{suffix}_i{int(number):05d}", [h]))
        else:
            flat.append((key, suffix, hs))

    # Acquisitions that cover other positions are separate volumes (two stacks in one series);
    # those that repeat the same positions are the time points of one 4D series. One that
    # covers a subset of another's positions is an incomplete time point, not a new stack,
    # and must surface as missing slices.
    final = []
    for key, suffix, hs in flat:
        by_acq: dict = {}
        for h in hs:
            by_acq.setdefault(h.tags.get("AcquisitionNumber") or 0, []).append(h)
        covered = [_positions(v) for v in by_acq.values()]
        widest = max(covered, key=len) if covered else frozenset()
        if len(by_acq) > 1 and any(not c <= widest for c in covered):
            for acq, members in sorted(by_acq.items()):
                final.append((key + (("acq", acq),), f"{suffix}_a{acq}", members))
        else:
            final.append((key, suffix, hs))

    series = [Series(key, suffix, hs) for key, suffix, hs in final]
    series.sort(key=lambda s: (str(s.tags.get("PatientID") or ""), s.tags.get("SeriesNumber") or 0, s.uid, s.suffix))
    return series
