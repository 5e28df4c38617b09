"""Batch DICOM to NIfTI + BIDS JSON conversion: parallel, resumable, never stopped by one bad case.

The work happens in three passes: read every file's header (in parallel), group headers into
series, then stack and write each series (in parallel). A series whose ``.json`` sidecar is
already present next to its NIfTI is skipped, so re-running after a crash finishes the job.
Every output is written under a temporary name and renamed, so a killed run leaves no
partial file under a final name. Inputs are only ever opened for reading.
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ldmonai.errors import LdmonaiError, UsageError
from ldmonai.io.atomic import atomic_path, atomic_write_json, remove_stale_temps
from ldmonai.prep.dicom.header import read_header
from ldmonai.prep.dicom.naming import DEFAULT_TEMPLATE, inside, render_name, template_fields
from ldmonai.prep.dicom.nifti_writer import write_nifti1
from ldmonai.prep.dicom.series import Series, drop_duplicates, group_series

REPORT_NAME = "conversion_report.json"


@dataclass
class ConversionReport:
    """What a batch did. ``failed`` entries carry ``path``, ``reason`` and ``fix``."""

    input_dir: str
    output_dir: str
    converted: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    duplicates: list = field(default_factory=list)
    files_scanned: int = 0
    files_ignored: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def written(self) -> list[Path]:
        return [Path(c["nifti"]) for c in self.converted]

    def to_dict(self) -> dict:
        return {
            "input_dir": self.input_dir, "output_dir": self.output_dir, "ok": self.ok,
            "files_scanned": self.files_scanned, "files_ignored": self.files_ignored,
            "seconds": round(self.seconds, 3), "converted": self.converted,
            "skipped": self.skipped, "failed": self.failed, "duplicates": self.duplicates,
        }

    def summary(self) -> str:
        lines = [f"{len(self.converted)} series converted, {len(self.skipped)} already done, "
                 f"{len(self.failed)} failed; {self.files_scanned} files read "
                 f"({self.files_ignored} not DICOM images, {len(self.duplicates)} duplicates) in {self.seconds:.2f} s -> {self.output_dir}"]
        for f in self.failed:
            lines.append(f"  FAILED {LdmonaiError.from_dict(f)}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- helpers
def list_files(in_dir: str | os.PathLike) -> list[str]:
    """Every regular file below ``in_dir`` (any suffix), sorted for reproducible grouping."""
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
        raise LdmonaiError("input folder is empty", root, "point IN_DIR at a folder that holds DICOM files")
    return out


def _scan_one(path: str):
    try:
        return path, read_header(path), None
    except LdmonaiError as exc:
        return path, None, exc.to_dict()
    except Exception as exc:  # never let one odd file stop the batch
        return path, None, {"path": path, "reason": f"unexpected error reading header: {exc!r}",
                            "fix": "please report this file's vendor and modality"}


def _progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="file" if "read" in desc else "series",
                file=sys.stderr, leave=False, dynamic_ncols=True)


def _descrip(sidecar: dict) -> bytes:
    te = sidecar.get("EchoTime")
    text = f"TE={te * 1000:g};" if isinstance(te, (int, float)) else ""
    return (text + f"Time={sidecar.get('AcquisitionTime', '')}")[:79].encode("ascii", "replace")


def write_nifti(volume, sidecar: dict, nifti_path: Path) -> None:
    """Write a stacked volume as NIfTI-1 with qform and sform both set to its affine."""
    tr = sidecar.get("RepetitionTime")
    with atomic_path(nifti_path) as tmp:
        write_nifti1(tmp, volume.data, volume.affine, rgb=bool(volume.notes.get("Color")),
                     tr=float(tr) if isinstance(tr, (int, float)) else None,
                     slope=volume.slope, intercept=volume.intercept, descrip=_descrip(sidecar))


def _convert_one(series: Series, nifti: str, sidecar_path: str) -> dict:
    from ldmonai.prep.dicom.sidecar import build_sidecar
    from ldmonai.prep.dicom.volume import stack_series

    try:
        volume = stack_series(series)
        sidecar = build_sidecar(series, volume)
        sidecar["ConversionSourceId"] = series.id
        write_nifti(volume, sidecar, Path(nifti))
        atomic_write_json(sidecar_path, sidecar)  # last: its presence marks the series done
        return {"id": series.id, "nifti": nifti, "sidecar": sidecar_path, "shape": list(volume.data.shape),
                "files": len(series.headers), "source": series.folder}
    except LdmonaiError as exc:
        return {"id": series.id, "error": exc.to_dict()}
    except MemoryError:
        return {"id": series.id, "error": {"path": series.folder, "reason": "not enough memory to stack this series",
                                           "fix": "convert it alone with --workers 1"}}
    except Exception as exc:
        return {"id": series.id, "error": {"path": series.folder, "reason": f"unexpected error: {exc!r}",
                                           "fix": "please report this series' vendor and modality"}}


def _already_done(nifti: Path, sidecar: Path, series_id: str) -> bool:
    if not (nifti.is_file() and sidecar.is_file()):
        return False
    try:
        return json.loads(sidecar.read_text()).get("ConversionSourceId") == series_id
    except (OSError, ValueError):
        return False


def _map(func, items, workers: int, desc: str, show: bool):
    if workers <= 1 or len(items) <= 1:
        yield from _progress(map(func, items), len(items), desc, show)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        chunk = max(1, len(items) // (workers * 8))
        yield from _progress(pool.map(func, items, chunksize=chunk), len(items), desc, show)


# ----------------------------------------------------------------------------- entry points
def convert_tree(in_dir: str | os.PathLike, out_dir: str | os.PathLike, template: str = DEFAULT_TEMPLATE,
                 workers: int = 1, compress: bool = True, overwrite: bool = False,
                 progress: bool | None = None, write_report: bool = True) -> ConversionReport:
    """Convert every DICOM series below ``in_dir`` into ``out_dir``.

    Args:
        in_dir: folder tree of DICOM files (any suffix, DICOMDIR trees included), or one file.
        out_dir: where ``<template>.nii[.gz]`` and ``<template>.json`` are written.
        template: output name from DICOM keywords; ``/`` makes sub-folders.
        workers: processes for header reading and conversion.
        compress: write ``.nii.gz`` (else ``.nii``).
        overwrite: redo series whose outputs already exist.
        progress: show progress bars (default: when stderr is a terminal).
        write_report: write ``conversion_report.json`` into ``out_dir``.

    Returns:
        A :class:`ConversionReport`; failures never raise, they are listed in it.
    """
    start = time.perf_counter()
    template_fields(template)
    show = sys.stderr.isatty() if progress is None else progress
    in_root = Path(in_dir)
    out_root = Path(out_dir)
    if out_root.resolve() == in_root.resolve() or in_root.resolve() in out_root.resolve().parents:
        raise LdmonaiError("output folder lies inside the input folder", out_root,
                           "choose an OUT_DIR outside IN_DIR so that inputs are never touched")
    files = list_files(in_root)
    out_root.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out_root)
    report = ConversionReport(str(in_root), str(out_root), files_scanned=len(files))

    headers = []
    for path, header, error in _map(_scan_one, files, workers, "reading headers", show):
        if error:
            report.failed.append(error)
        elif header is None:
            report.files_ignored += 1
        else:
            headers.append(header)
    if not headers and not report.failed:
        raise LdmonaiError(f"no DICOM images among {len(files)} files", in_root,
                           "check that IN_DIR holds DICOM image files (any suffix is fine)")

    headers, report.duplicates = drop_duplicates(headers)
    ext = ".nii.gz" if compress else ".nii"
    jobs, taken = [], set()
    for series in group_series(headers):
        name = render_name(template, series.tags, series.suffix)
        candidate, n = name, 0
        while candidate in taken:  # two series, one name: keep both, dcm2niix-style
            n += 1
            candidate = f"{name}_{chr(ord('a') + n - 1) if n <= 26 else n}"
        taken.add(candidate)
        nifti = inside(out_root, candidate + ext)
        sidecar = inside(out_root, candidate + ".json")
        if not overwrite and _already_done(nifti, sidecar, series.id):
            report.skipped.append({"id": series.id, "nifti": str(nifti), "source": series.folder})
            continue
        jobs.append((series, str(nifti), str(sidecar)))

    for result in _map(_convert_star, jobs, workers, "converting series", show):
        if "error" in result:
            report.failed.append(result["error"])
        else:
            report.converted.append(result)
    report.seconds = time.perf_counter() - start
    if write_report:
        atomic_write_json(out_root / REPORT_NAME, report.to_dict())
    return report


def _convert_star(job):
    return _convert_one(*job)


def convert_series(in_dir: str | os.PathLike, out_dir: str | os.PathLike, **kwargs) -> list[Path]:
    """Convert a folder (or one file) and return the NIfTI paths written.

    Series that fail are listed in ``out_dir/conversion_report.json``; if nothing at all
    could be converted an :class:`LdmonaiError` names the first failure.
    """
    report = convert_tree(in_dir, out_dir, **kwargs)
    if report.failed and not report.converted and not report.skipped:
        first = report.failed[0]
        raise LdmonaiError(f"no series converted; first failure: {first['reason']}", first["path"], first.get("fix"))
    return report.written + [Path(s["nifti"]) for s in report.skipped]
