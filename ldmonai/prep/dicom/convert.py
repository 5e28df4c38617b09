"""Batch DICOM to NIfTI + BIDS JSON on the dcm2niix engine: series-parallel, resumable, atomic.

Three passes:

1. **index** (:mod:`.index`): read ``SeriesInstanceUID`` from every file and the name template's
   keywords from the first file of each series, and group files into series;
2. **convert** (:func:`.engine.run_batch`): dcm2niix calls on whole series, a few series a call
   (:func:`plan_batches`: as many calls as workers on small inputs, calls of about
   :data:`BATCH_BYTES` on large ones), driven by local threads (dcm2niix runs in its own
   processes) or on a Dask cluster (:mod:`ldmonai.parallel`), each into a private folder;
3. **publish** (:func:`.engine.publish`): this process moves each series' files into OUT
   (``os.replace``), in the index's order so that name clashes resolve the same way every run,
   then writes the series' done-marker under ``OUT/.ldmonai/done/``.

A re-run skips series whose marker and outputs exist. A failed series is recorded in
``conversion_report.json`` with its folder, dcm2niix's message and a fix, and the batch goes on.
Inputs are only read: dcm2niix gets a list of their paths.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import zlib
from pathlib import Path

from ldmonai.errors import LdmonaiError, UsageError
from ldmonai.io.atomic import atomic_write_json
from ldmonai.parallel import completed, task_executor, threaded
from ldmonai.prep.dicom import engine
from ldmonai.prep.dicom.index import SeriesFiles, chunks, complete_tags, group_series, index_chunk, index_folders, \
    list_files
from ldmonai.prep.dicom.naming import DEFAULT_TEMPLATE, render_name, template_fields

REPORT_NAME = "conversion_report.json"
INDEX_PROCESSES_FROM = 5000  # files; below this, forking index workers costs more than it saves
# dcm2niix's time on a series, fitted on 91 series of four dcm_qa suites (7 % median error):
# 19 ms a call, 0.04 ms a file and 3.1 ms a MB. A call's cost is counted in bytes, each file
# adding PER_FILE_BYTES, and calls hold about BATCH_BYTES (0.8 s of work, so the 19-ms start costs
# 2 %) unless one series is larger: progress, resume and load balance stay fine on large trees.
PER_FILE_BYTES = 13_000
BATCH_BYTES = 256 * 2**20
_UID = re.compile(r"[0-9.]{1,64}")  # a series goes into a batch only if its %j folder name is its UID
STATE_DIR = ".ldmonai"


class ConversionReport:
    """What a batch did. ``failed`` entries carry ``path``, ``reason`` and ``fix``.

    (A plain class, not a dataclass: ``dataclasses`` imports ``inspect``, 5 ms of a 0.1-s run.)
    """

    def __init__(self, input_dir: str, output_dir: str, engine: dict | None = None, files_scanned: int = 0,
                 files_ignored: int = 0):
        self.input_dir, self.output_dir = input_dir, output_dir
        self.engine = engine or {}
        self.converted: list = []
        self.skipped: list = []
        self.failed: list = []
        self.no_output: list = []
        self.files_scanned, self.files_ignored = files_scanned, files_ignored
        self.seconds = 0.0
        self.stage_seconds: dict = {}

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def written(self) -> list[Path]:
        """Every NIfTI written by this run."""
        return [Path(p) for c in self.converted for p in c["outputs"] if p.endswith((".nii", ".nii.gz"))]

    def to_dict(self) -> dict:
        return {
            "input_dir": self.input_dir, "output_dir": self.output_dir, "ok": self.ok, "engine": self.engine,
            "files_scanned": self.files_scanned, "files_ignored": self.files_ignored,
            "seconds": round(self.seconds, 3), "stage_seconds": self.stage_seconds, "converted": self.converted,
            "skipped": self.skipped, "no_output": self.no_output, "failed": self.failed,
        }

    def summary(self) -> str:
        stages = ", ".join(f"{k} {v:.2f} s" for k, v in self.stage_seconds.items())
        lines = [f"{len(self.converted)} series converted, {len(self.skipped)} already done, "
                 f"{len(self.no_output)} gave no image (dcm2niix skipped them), {len(self.failed)} failed; "
                 f"{self.files_scanned} files read ({self.files_ignored} not DICOM images) in {self.seconds:.2f} s "
                 f"({stages}) -> {self.output_dir}"]
        for f in self.failed:
            lines.append(f"  FAILED {LdmonaiError.from_dict(f)}")
        for n in self.no_output:
            why = n["log"][-1] if n["log"] else "dcm2niix wrote nothing (derived or non-image series?)"
            lines.append(f"  NO IMAGE {n['source']} ({n['files']} files): {why}")
        return "\n".join(lines)


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n: int) -> None:
        pass


def _progress(total: int, desc: str, enabled: bool):
    """A progress bar over ``total`` series (a no-op one when disabled: tqdm is not even imported)."""
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="series", file=sys.stderr, leave=False, dynamic_ncols=True)


def _done(marker: Path) -> dict | None:
    try:
        record = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return record if all(Path(p).is_file() for p in record.get("outputs", [])) else None


def convert_tree(in_dir: str | os.PathLike, out_dir: str | os.PathLike, template: str = DEFAULT_TEMPLATE,
                 workers: int = 1, compress: bool = True, overwrite: bool = False, progress: bool | None = None,
                 write_report: bool = True, ignore_derived: bool = False, engine_args: list[str] | None = None,
                 scheduler: str | None = None, timeout: float | None = None,
                 adjacent: bool = False) -> ConversionReport:
    """Convert every DICOM series below ``in_dir`` into ``out_dir`` with dcm2niix.

    Args:
        in_dir: folder tree of DICOM files (any suffix, DICOMDIR trees included), or one file.
        out_dir: output folder; created only once a series has been found.
        template: output name: ``{Keyword}`` fields are filled by ldmonai from DICOM tags (sanitised;
            ``/`` makes sub-folders) and dcm2niix's own ``%`` fields (``%p_%s``) pass through.
        workers: local processes, or Dask workers with ``scheduler="local"``.
        compress: ``.nii.gz`` (dcm2niix ``-z y``) or ``.nii`` (``-z n``).
        overwrite: convert series again even where their outputs exist (old outputs are removed).
        progress: progress bar (default: when stderr is a terminal).
        write_report: write ``conversion_report.json`` into ``out_dir``.
        ignore_derived: dcm2niix ``-i y``: skip derived, localizer and 2D images.
        engine_args: further dcm2niix options, e.g. ``["-m", "y", "-ba", "n"]``.
        scheduler: None (local), ``"local"`` (a dask.distributed LocalCluster) or a scheduler address.
        timeout: seconds one series may take before it is recorded as failed.
        adjacent: dcm2niix's ``-a y`` assumption, that the files of a series always share a folder:
            one dcm2niix call per folder, with no header pass over every file (faster on large
            trees; a series split over folders is then converted in pieces, and ``{Keyword}``
            fields come from each folder's first file).

    Returns:
        A :class:`ConversionReport`; failed series are listed in it and never raise.
    """
    start = time.perf_counter()
    fields = template_fields(template)
    opts = engine.options(compress, ignore_derived, engine_args)
    show = sys.stderr.isatty() if progress is None else progress
    in_root, out_root = Path(in_dir), Path(out_dir)
    if in_root.exists() and (out_root.resolve() == in_root.resolve() or in_root.resolve() in out_root.resolve().parents):
        raise UsageError("output folder lies inside the input folder", out_root,
                         "choose an OUT_DIR outside IN_DIR so that inputs are never touched")
    files = list_files(in_root)
    report = ConversionReport(str(in_root), str(out_root), files_scanned=len(files),
                              engine={"name": "dcm2niix", "version": engine.version(), "options": opts})
    folder_name = (in_root.resolve().parent if in_root.is_file() else in_root.resolve()).name

    # Local runs: the index is Python work, in processes only when it is big enough to pay for them;
    # the conversion is dcm2niix's work in its own processes, so threads drive it (no fork, no
    # pickling). A Dask scheduler runs both stages on its workers.
    index_workers = workers if (scheduler or len(files) >= INDEX_PROCESSES_FROM) else 1
    with task_executor(index_workers, scheduler) as pool:
        t = time.perf_counter()
        if adjacent:
            series = _folder_units(pool, files, fields, workers, report)
        else:
            records = []
            tasks = [(part, fields) for part in chunks(files, 4 * max(1, workers))]
            for chunk in completed(pool, index_chunk, tasks):
                for path, tags, error, size in chunk:
                    if error:
                        report.failed.append(error)
                    elif tags is None:
                        report.files_ignored += 1
                    else:
                        records.append((path, tags, size))
            # dcm2niix takes series in the order of their UID's CRC-32 (nii_dicom_batch.cpp sorts by
            # seriesUidCrc): publishing in that order gives a clashing name the letter it gets there.
            series = sorted(group_series(records), key=lambda s: zlib.crc32(s.uid.encode()))
            report.failed.extend(complete_tags(series, fields))
        report.stage_seconds["index"] = round(time.perf_counter() - t, 3)
        if not series:
            report.seconds = time.perf_counter() - start
            if report.failed:
                return report  # nothing to convert: OUT is never created
            raise LdmonaiError(f"no DICOM images among {len(files)} files", in_root,
                               "check that IN_DIR holds DICOM image files (any suffix is fine)")

        state = out_root / STATE_DIR
        (state / "done").mkdir(parents=True, exist_ok=True)
        engine.rmtree(out_root / engine.TMP_DIR)  # left by a killed run
        jobs = []
        for s in series:
            name = render_name(template, s.tags)
            key = engine.series_key(s.uid, name, opts)
            marker = state / "done" / f"{key}.json"
            previous = _done(marker)
            if previous and not overwrite:
                report.skipped.append({"id": key, "outputs": previous["outputs"], "source": s.folder})
                continue
            if previous and overwrite:
                for p in previous["outputs"]:
                    Path(p).unlink(missing_ok=True)
            marker.unlink(missing_ok=True)
            jobs.append({"id": key, "uid": s.uid, "files": s.files, "cost": s.nbytes + PER_FILE_BYTES * len(s.files),
                         "source": s.folder, "folder_name": folder_name,
                         "name": name, "options": opts, "tmp": str(out_root / engine.TMP_DIR / key),
                         "timeout": timeout, "marker": str(marker)})

        t = time.perf_counter()
        by_id = {j["id"]: j for j in jobs}
        order = [j["id"] for j in jobs]
        finished: dict[str, dict] = {}
        tasks = [({"jobs": [{k: v for k, v in j.items() if k != "marker"} for j in batch], "name": name,
                   "options": opts, "folder_name": folder_name, "timeout": timeout,
                   "tmp": str(out_root / engine.TMP_DIR / f"batch{i}")},)
                 for i, (batch, name) in enumerate(plan_batches(jobs, workers))]
        if scheduler or workers <= 1:
            results = completed(pool, engine.run_batch, tasks)
        else:  # dcm2niix works in its own processes: threads drive it (no fork, no pickling)
            results = threaded(engine.run_batch, tasks, workers)
        with _progress(len(jobs), "dcm2niix", show) as bar:
            for batch_results in results:
                for result in batch_results:
                    finished[result["id"]] = result
                bar.update(len(batch_results))
                while order and order[0] in finished:  # publish in index order: name clashes resolve reproducibly
                    _publish(finished.pop(order[0]), by_id[order.pop(0)], out_root, report)
        report.stage_seconds["convert"] = round(time.perf_counter() - t, 3)
    engine.rmtree(out_root / engine.TMP_DIR)
    report.seconds = time.perf_counter() - start
    if write_report:
        atomic_write_json(out_root / REPORT_NAME, report.to_dict())
    return report


def plan_batches(jobs: list[dict], workers: int) -> list[tuple[list[dict], str | None]]:
    """Whole series packed into dcm2niix calls: ``(jobs, -f of the call)`` per call.

    A multiple of ``workers`` calls of about :data:`BATCH_BYTES` at most, filled costliest series
    first onto the lightest call (so two workers get two calls of equal cost on a small input,
    and every worker the same number of calls on a large one), costliest call first. A series
    whose UID cannot name a folder, or a template that mixes ``{Keyword}`` with dcm2niix fields
    (:func:`.engine.batch_name`), gets a call of its own.
    """
    alone = [j for j in jobs if not _UID.fullmatch(j["uid"])]
    shared = [j for j in jobs if _UID.fullmatch(j["uid"])]
    name = engine.batch_name([j["name"] for j in shared]) if shared else None
    if name is None:
        alone, shared = jobs, []
    calls = [[j] for j in alone]
    if shared:
        rounds = -(-sum(j["cost"] for j in shared) // (workers * BATCH_BYTES))  # calls per worker
        n_calls = min(len(shared), workers * max(1, rounds))
        bins: list[list[dict]] = [[] for _ in range(n_calls)]
        load = [0] * n_calls
        for job in sorted(shared, key=lambda j: -j["cost"]):
            lightest = load.index(min(load))
            bins[lightest].append(job)
            load[lightest] += job["cost"]
        calls = [b for _, b in sorted(zip(load, bins), key=lambda lb: -lb[0])] + calls
    return [(c, name if len(c) > 1 else None) for c in calls]


def _folder_units(pool, files: list[str], fields: list[str], workers: int, report: ConversionReport) -> list:
    """One conversion unit per folder that holds DICOM files (``adjacent``)."""
    by_folder: dict[str, list[str]] = {}
    for f in files:
        by_folder.setdefault(os.path.dirname(f), []).append(f)
    units = []
    tasks = [(part, fields) for part in chunks(sorted(by_folder.items()), 4 * max(1, workers))]
    for chunk in completed(pool, index_folders, tasks):
        for folder, dicom, tags, error in chunk:
            report.files_ignored += len(by_folder[folder]) - len(dicom)
            if error and tags is None:
                report.failed.append(error)
            if dicom and tags is not None:
                units.append(SeriesFiles(f"folder:{folder}", dicom, tags))
    return sorted(units, key=lambda u: u.uid)


def _publish(result: dict, job: dict, out_root: Path, report: ConversionReport) -> None:
    if "error" in result:
        report.failed.append(result["error"])
        return
    if not result["outputs"]:
        entry = {"id": result["id"], "source": result["source"], "files": result["files"], "log": result["log"]}
        if result["returncode"] not in (0, 2):  # 2: dcm2niix found no image it converts (e.g. -i y)
            reason = result["log"][-1] if result["log"] else f"dcm2niix exited with {result['returncode']}"
            report.failed.append({"path": result["source"], "reason": f"dcm2niix: {reason}",
                                  "fix": "check the series (dcm2niix's message above); convert it alone with "
                                         "dcm2niix -v y to see more"})
        else:
            report.no_output.append(entry)
        return
    outputs = engine.publish(result, out_root)
    atomic_write_json(job["marker"], {"id": result["id"], "outputs": outputs, "source": result["source"]})
    report.converted.append({"id": result["id"], "outputs": outputs, "source": result["source"],
                             "files": result["files"], "seconds": result["seconds"], "log": result["log"]})


def convert_series(in_dir: str | os.PathLike, out_dir: str | os.PathLike, **kwargs) -> list[Path]:
    """Convert a folder (or one file) and return the NIfTI paths written or already there.

    Series that fail are listed in ``out_dir/conversion_report.json``; if nothing at all
    could be converted an :class:`LdmonaiError` names the first failure.
    """
    report = convert_tree(in_dir, out_dir, **kwargs)
    if report.failed and not report.converted and not report.skipped:
        first = report.failed[0]
        raise LdmonaiError(f"no series converted; first failure: {first['reason']}", first["path"], first.get("fix"))
    skipped = [Path(p) for s in report.skipped for p in s["outputs"] if p.endswith((".nii", ".nii.gz"))]
    return report.written + skipped
