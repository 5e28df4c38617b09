"""Decathlon-style datalists, checked before any training starts.

MONAI's ``load_decathlon_datalist`` fails with a bare ``KeyError`` or a missing-file error
deep inside a data loader worker; here every problem names the datalist, the entry and
the fix, and is raised before the first epoch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from ldmonai.errors import LdmonaiError, UsageError


def load_datalist(
    datalist: str | os.PathLike,
    split: str = "training",
    keys: Sequence[str] = ("image", "label"),
    base_dir: str | os.PathLike | None = None,
    optional_keys: Sequence[str] = (),
) -> list[dict]:
    """Read one split of a datalist JSON and resolve its paths.

    Args:
        datalist: path to ``{"training": [{"image": ..., "label": ...}], "validation": [...], ...}``.
        split: which list to return.
        keys: keys every entry must have; their values are file paths.
        optional_keys: path keys that some entries may lack (a mask); resolved and
            checked like ``keys`` where present.
        base_dir: what relative paths are relative to (default: the datalist's folder).

    Returns:
        the entries, with absolute paths, in file order (never re-sorted).

    Raises:
        LdmonaiError: unreadable JSON, missing or empty split, an entry without a key,
            or a path that does not exist.
    """
    datalist = Path(datalist)
    if not datalist.is_file():
        raise UsageError("datalist not found", datalist, "pass the path of a datalist JSON file")
    try:
        data = json.loads(datalist.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LdmonaiError(f"not valid JSON ({err})", datalist, "check the file is a JSON datalist") from None
    if not isinstance(data, dict) or split not in data:
        present = sorted(k for k, v in data.items() if isinstance(v, list)) if isinstance(data, dict) else []
        raise LdmonaiError(
            f"no {split!r} list (lists present: {present})",
            datalist,
            f'add "{split}": [{{"image": ..., "label": ...}}] or choose another split',
        )
    entries = data[split]
    if not isinstance(entries, list) or not entries:
        raise LdmonaiError(f"the {split!r} list is empty", datalist, "add at least one case")
    base = Path(base_dir) if base_dir is not None else datalist.parent
    out = []
    for i, entry in enumerate(entries):
        where = f"{split}[{i}]"
        if not isinstance(entry, dict):
            raise LdmonaiError(f"{where} is not an object", datalist, 'write each case as {"image": ..., "label": ...}')
        missing = [k for k in keys if k not in entry]
        if missing:
            raise LdmonaiError(f"{where} has no key {missing[0]!r} (keys: {sorted(entry)})", datalist, f"add {missing[0]!r} to every case")
        item = dict(entry)
        for k in [*keys, *(k for k in optional_keys if entry.get(k))]:
            path = Path(str(entry[k]))
            path = path if path.is_absolute() else base / path
            if not path.exists():
                raise LdmonaiError(f"{where}[{k!r}] points to a missing file {path}", datalist, "fix the path or remove the case")
            item[k] = str(path)
        out.append(item)
    return out


# Entry keys whose values are file paths. One convention for every datalist the project writes
# and reads: a relative path is relative to the datalist's own folder (MONAI's
# ``load_decathlon_datalist`` default, and ``load_datalist``'s), never to the working directory.
PATH_KEYS = ("image", "label", "mask", "source")


def write_datalist(datalist: str | os.PathLike, data: dict) -> Path:
    """Write ``data`` as a datalist JSON (atomically), every path relative to the datalist's folder.

    Paths in ``PATH_KEYS`` may come absolute or relative to the working directory; both are
    rewritten relative to ``datalist``'s folder, so the file stays valid wherever the process
    that reads it runs and wherever the folder is moved with its data. Other keys and any
    non-list entry (``name``, ``labels``) are kept as they are. Returns the path written.
    """
    from ldmonai.io.atomic import atomic_write_json

    datalist = Path(datalist)
    folder = datalist.parent.resolve()

    def relative(value):
        return Path(os.path.relpath(Path(value).resolve(), folder)).as_posix()

    out = {}
    for split, entries in data.items():
        if isinstance(entries, list):
            entries = [{k: relative(v) if k in PATH_KEYS and isinstance(v, (str, os.PathLike)) else v
                        for k, v in e.items()} if isinstance(e, dict) else e for e in entries]
        out[split] = entries
    return atomic_write_json(datalist, out)


def label_names(datalist: str | os.PathLike | None, num_classes: int) -> dict[str, str]:
    """Class names for ``num_classes`` label values, from the datalist's ``labels`` entry.

    Medical Segmentation Decathlon datalists carry ``"labels": {"0": "background", "1": ...}``;
    those names are used where present. Values without a name are called ``label_<value>``
    (0 is ``background``), never another data set's anatomy.
    """
    names = {"0": "background", **{str(i): f"label_{i}" for i in range(1, num_classes)}}
    try:
        given = json.loads(Path(datalist).read_text(encoding="utf-8")).get("labels") if datalist else None
    except (OSError, ValueError, AttributeError):
        given = None
    if isinstance(given, dict):
        names.update({str(k): str(v) for k, v in given.items() if str(k).isdigit() and int(k) < num_classes})
    return names


def evaluation_split(datalist: str | os.PathLike) -> str:
    """``test`` when the datalist has a non-empty test split, else ``validation``; logged either way."""
    import logging

    try:
        data = json.loads(Path(datalist).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {}
    split = "test" if isinstance(data, dict) and data.get("test") else "validation"
    logging.getLogger("ldmonai").info("evaluating the %r split of %s", split, datalist)
    return split
