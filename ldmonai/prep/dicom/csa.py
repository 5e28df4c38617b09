"""The Siemens CSA image header: private element (0029,xx10) of the "SIEMENS CSA HEADER" block.

Mosaic tiling, slice normals and slice timing live here. nibabel's ``csareader`` parses it,
but importing it imports all of nibabel and pydicom (0.27 s per converter process), so the
current CSA2 layout (``SV10``) is parsed here; the older CSA1 layout still goes to nibabel.
``tests/test_convert_elements.py`` checks that both parsers agree on real Siemens files.

Layout (little endian): ``SV10``, 4 unused bytes, tag count, a check word, then per tag a
64-byte name, VM, a 4-byte VR, SyngoDT, item count and a check word, followed by its items,
each ``4 x int32`` (the second is the length) and the value padded to 4 bytes.
"""

from __future__ import annotations

import struct
import warnings

from ldmonai.prep.dicom.header import read_values

CREATORS = [0x00290000 | block for block in range(0x10, 0x100)]
CSA_TAGS = CREATORS + [0x00290000 | (block << 8) | 0x10 for block in range(0x10, 0x100)]
MAX_ITEMS = 1000
_CONVERT = {"FL": float, "FD": float, "DS": float, "SS": int, "US": int, "SL": int, "UL": int, "IS": int}
_TAG = struct.Struct("<64si4s3i")
_ITEM = struct.Struct("<4i")


class CSAError(ValueError):
    """The CSA header is damaged."""


def _text(raw: bytes) -> str:
    return raw.split(b"\x00", 1)[0].decode("latin-1")


def parse_csa2(data: bytes) -> dict:
    """``{"type": 2, "n_tags": n, "tags": {name: {"vm", "vr", "n_items", "items", ...}}}``,
    the structure ``nibabel.nicom.csareader.read`` returns."""
    n_tags, check = struct.unpack_from("<2I", data, 8)
    if not 0 < n_tags <= MAX_ITEMS:
        raise CSAError(f"CSA header claims {n_tags} tags")
    out = {"type": 2, "unused0": data[4:8], "n_tags": n_tags, "check": check, "tags": {}}
    pos = 16
    for tag_no in range(n_tags):
        name, vm, vr, syngodt, n_items, last3 = _TAG.unpack_from(data, pos)
        pos += _TAG.size
        if n_items > MAX_ITEMS:
            raise CSAError(f"CSA tag {_text(name)!r} claims {n_items} items")
        vr = _text(vr)
        convert = _CONVERT.get(vr)
        n_values = vm or n_items
        items = []
        for item_no in range(n_items):
            length = _ITEM.unpack_from(data, pos)[1]
            pos += _ITEM.size
            if pos + length > len(data):
                raise CSAError("CSA item runs past the end of the header")
            if item_no >= n_values:
                pos += length + (-length % 4)
                continue
            value = _text(data[pos:pos + length])
            pos += length + (-length % 4)
            if convert is not None:
                if length == 0:
                    n_values = item_no  # the values end at the first empty item
                    continue
                value = convert(value)
            items.append(value)
        out["tags"][_text(name)] = {"n_items": n_items, "vm": vm, "vr": vr, "syngodt": syngodt,
                                    "last3": last3, "tag_no": tag_no, "items": items}
    return out


def read_csa(path: str) -> dict:
    """The CSA image header of ``path``, parsed ({} when absent or unreadable)."""
    try:
        vals = read_values(path, CSA_TAGS)
    except Exception:
        return {}
    data = None
    for tag in CREATORS:
        creator = vals.get(tag)
        if isinstance(creator, str) and creator.strip() == "SIEMENS CSA HEADER":
            data = vals.get(0x00290000 | ((tag & 0xFF) << 8) | 0x10)
            break
    if not isinstance(data, bytes) or len(data) < 16:
        return {}
    try:
        if data[:4] == b"SV10":
            return parse_csa2(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nibabel flags its DICOM readers as experimental
            from nibabel.nicom import csareader

            return csareader.read(data) or {}
    except Exception:
        return {}


__all__ = ["CSAError", "parse_csa2", "read_csa"]
