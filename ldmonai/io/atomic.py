"""Atomic file output: write to a hidden temporary name beside the target, then rename.

A killed process leaves either the complete old file, the complete new file, or a hidden
temporary that :func:`remove_stale_temps` cleans up on the next run; never a half-written
output under the final name. The temporary sits in the target's folder because ``os.replace``
is only atomic within one filesystem.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from collections.abc import Iterator, Mapping, Sequence

TMP_MARK = ".ldmonai-tmp"


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write to; on success it replaces ``target`` atomically.

    The temporary keeps the target's suffixes (``.nii.gz`` stays last) so that libraries
    which pick a format from the file name write the right one.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffixes = "".join(target.suffixes)
    stem = target.name[: len(target.name) - len(suffixes)] if suffixes else target.name
    tmp = target.with_name(f".{stem}.{os.getpid()}{TMP_MARK}{suffixes}")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write_json(target: str | os.PathLike, obj, indent: int = 2) -> Path:
    """Write ``obj`` as JSON to ``target`` atomically and return the target path."""
    with atomic_path(target) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=indent, ensure_ascii=False, allow_nan=False)
            fh.write("\n")
    return Path(target)


def atomic_write_csv(target: str | os.PathLike, rows: Sequence[Mapping]) -> Path:
    """Write dict ``rows`` as CSV to ``target`` atomically; the columns are every key, in the
    order they first appear. Returns the target path."""
    import csv  # here: the DICOM converter writes JSON only, and starts in a tenth of a second

    columns = list(dict.fromkeys(k for row in rows for k in row))
    with atomic_path(target) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    return Path(target)


def remove_stale_temps(root: str | os.PathLike) -> list[Path]:
    """Delete temporaries that a killed run left under ``root``; return what was removed."""
    removed = []
    root = Path(root)
    if not root.is_dir():
        return removed
    for path in root.rglob(f".*{TMP_MARK}*"):
        if path.is_file():
            path.unlink()
            removed.append(path)
    return removed
