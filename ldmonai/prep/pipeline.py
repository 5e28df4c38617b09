"""Batch preprocessing: a list of steps from a config file, run over a folder or a datalist.

A config is YAML or JSON::

    name: brain_t1
    steps:
      - step: n4
      - step: skullstrip
      - step: register
        template: mni152
        kind: affine
      - step: normalize
        method: zscore
      - step: slices
        axis: axial

``run_pipeline`` gives every case its own folder ``OUT/<case>/``, writes the final image
(plus mask and labels when there are any) atomically, and marks the case finished with
``done.json`` last. Re-running skips finished cases whose config has not changed, so a
killed batch resumes. A failing case is recorded in ``prep_report.json`` with the reason
and the fix, and the batch goes on. Inputs are only read.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ldmonai.errors import LdmonaiError, UsageError, first_line
from ldmonai.io.atomic import atomic_write_csv, atomic_write_json, remove_stale_temps
from ldmonai.io.names import IMAGE_SUFFIXES, image_stem
from ldmonai.parallel import completed, task_executor
from ldmonai.prep.dicom.naming import sanitize_component
from ldmonai.prep.steps import Case, attach_mask_and_labels, build_step

REPORT_NAME = "prep_report.json"
DONE_NAME = "done.json"


def load_config(source) -> dict:
    """A pipeline config from a YAML/JSON file, or a dict/list given directly."""
    if isinstance(source, list):
        return {"name": "pipeline", "steps": source}
    if isinstance(source, dict):
        config = source
        where = "pipeline config"
    else:
        path = Path(source)
        where = str(path)
        if not path.is_file():
            raise UsageError("pipeline config not found", path, "pass a YAML or JSON file, e.g. configs/prep/brain_t1.yaml")
        try:
            if path.suffix.lower() == ".json":
                config = json.loads(path.read_text())
            else:
                import yaml

                config = yaml.safe_load(path.read_text())
        except Exception as err:  # noqa: BLE001 - any parse error is the user's file
            raise UsageError(f"cannot parse pipeline config ({first_line(err)[:200]})", path,
                               "fix the YAML/JSON syntax") from None
        config = {"name": path.stem, **config} if isinstance(config, dict) else config
    if not isinstance(config, dict) or not isinstance(config.get("steps"), list) or not config["steps"]:
        raise UsageError("pipeline config needs a non-empty 'steps' list", where,
                           "write 'steps:' followed by entries such as '- step: n4'")
    for entry in config["steps"]:
        try:
            build_step(entry, where)  # every mistake in the file is reported before any case runs
        except UsageError:
            raise
        except LdmonaiError as err:  # a mistake in the config is a bad argument: exit status 2
            raise UsageError(err.message, err.path, err.fix) from None
    return config


def config_digest(config: dict) -> str:
    return hashlib.sha256(json.dumps(config["steps"], sort_keys=True).encode()).hexdigest()[:16]


def find_cases(source: str | os.PathLike) -> list[dict]:
    """Cases from a folder (every image below it, sorted) or a datalist JSON (all its splits).

    Datalist entries may carry ``mask`` and ``label`` besides ``image``; relative paths are
    relative to the datalist's folder.
    """
    source = Path(source)
    if source.is_file() and source.suffix.lower() == ".json":
        try:
            data = json.loads(source.read_text())
        except ValueError as err:
            raise LdmonaiError(f"datalist is not valid JSON ({err})", source, "fix the JSON syntax") from None
        entries = []
        for split in ("training", "validation", "test"):
            for item in data.get(split, []) if isinstance(data, dict) else []:
                item = {"image": item} if isinstance(item, str) else dict(item)
                item["split"] = split
                if "image" not in item:
                    raise LdmonaiError(f"a '{split}' entry has no 'image' key: {item}", source, "add the image path")
                for key in ("image", "mask", "label"):
                    if item.get(key) and not Path(item[key]).is_absolute():
                        item[key] = str(source.parent / item[key])
                entries.append(item)
        if not entries:
            raise LdmonaiError("datalist lists no images", source, "add 'training'/'validation'/'test' entries")
        return entries
    if source.is_file():
        return [{"image": str(source)}]
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.is_file() and not p.name.startswith(".")
                       and p.name.lower().endswith(IMAGE_SUFFIXES))
        if not files:
            raise LdmonaiError("folder holds no images", source, f"put images ({', '.join(IMAGE_SUFFIXES)}) in it")
        return _pair_labels(files)
    raise UsageError("input not found", source, "pass an image, a folder of images or a datalist JSON")


#: A file named like an image plus one of these is that image's label map, not a case of its own.
LABEL_SUFFIXES = ("_label", "_labels", "_seg")


def _pair_labels(files: list[Path]) -> list[dict]:
    """One entry per image; ``X_label.nii.gz`` beside ``X.nii.gz`` becomes that entry's ``label``.

    A folder of segmentation data (``Case1.nii.gz``, ``Case1_label.nii.gz``) is a list of pairs:
    resampling the label as an image would interpolate its class ids.
    """
    keys = {p: (p.parent, image_stem(p)) for p in files}
    images = set(keys.values())
    labels = {}  # image key -> its label file
    for p, (folder, stem) in keys.items():
        for suffix in LABEL_SUFFIXES:
            if stem.endswith(suffix) and (folder, stem[: -len(suffix)]) in images:
                labels[(folder, stem[: -len(suffix)])] = p
                break
    paired = set(labels.values())
    return [{"image": str(p), **({"label": str(labels[keys[p]])} if keys[p] in labels else {})}
            for p in files if p not in paired]


def write_output_datalist(records: list[dict], entries: dict[str, dict], out_root: Path) -> Path:
    """``OUT/datalist.json``: each finished case's outputs, in its input split (``training`` otherwise),
    with paths relative to OUT, so the bundles train on the prepared data directly."""
    data: dict[str, list] = {}
    for record in records:
        files = record.get("files", {})
        if "image" not in files:
            continue
        item = {"image": os.path.relpath(files["image"], out_root)}
        for key, name in (("label", "labels"), ("mask", "mask")):
            if name in files:
                item[key] = os.path.relpath(files[name], out_root)
        data.setdefault(entries.get(record["case"], {}).get("split", "training"), []).append(item)
    path = out_root / "datalist.json"
    atomic_write_json(path, data)
    return path


def case_ids(entries: list[dict]) -> list[str]:
    """Safe, unique folder names: the image stem, with a suffix when two images share one."""
    ids, seen = [], {}
    for entry in entries:
        base = sanitize_component(image_stem(entry["image"]))
        n = seen.get(base, 0)
        seen[base] = n + 1
        ids.append(base if n == 0 else f"{base}_{n + 1}")
    return ids


@dataclass
class PrepReport:
    """What a batch did; ``failed`` entries carry ``case``, ``path``, ``reason`` and ``fix``."""

    config: str
    output_dir: str
    done: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    suspect: list = field(default_factory=list)  # done, but a check says the result is implausible
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def note_suspect(self, record: dict) -> None:
        """Count a finished case (this run's or a resumed one) whose steps flagged it implausible."""
        reasons = record.get("meta", {}).get("suspect")
        if reasons:
            self.suspect.append({"case": record["case"], "reasons": reasons})

    def to_dict(self) -> dict:
        return {"config": self.config, "output_dir": self.output_dir, "ok": self.ok, "seconds": round(self.seconds, 2),
                "done": self.done, "skipped": self.skipped, "failed": self.failed,
                "suspect_count": len(self.suspect), "suspect": self.suspect}

    def summary(self) -> str:
        lines = [f"{len(self.done)} cases done, {len(self.skipped)} already done, {len(self.failed)} failed"
                 + (f", {len(self.suspect)} SUSPECT" if self.suspect else "")
                 + f" in {self.seconds:.1f} s -> {self.output_dir}"]
        lines += [f"  FAILED {f['case']}: {LdmonaiError.from_dict(f)}" for f in self.failed]
        lines += [f"  SUSPECT {s['case']}: {'; '.join(s['reasons'])}" for s in self.suspect]
        return "\n".join(lines)


def _init_worker(threads: int) -> None:
    # ITK filters and elastix (ldmonai.prep.registration) both take their thread count from here.
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


_STEPS_BY_DIGEST: dict[str, list] = {}


def _steps(config: dict) -> list:
    """The config's steps, built once per process: they cache their atlas and template images."""
    digest = config_digest(config)
    if digest not in _STEPS_BY_DIGEST:
        _STEPS_BY_DIGEST[digest] = [build_step(spec) for spec in config["steps"]]
    return _STEPS_BY_DIGEST[digest]


def run_case(config: dict, entry: dict, case_id: str, out_root: str, participant: dict | None = None) -> dict:
    """Run every step on one case and write its outputs; return its record (never raises)."""
    out_dir = Path(out_root) / case_id
    start = time.perf_counter()
    created = not out_dir.exists()
    try:
        record = _run_steps(config, entry, case_id, out_dir, participant, start)
        created = False  # finished: its folder stays
        return record
    except LdmonaiError as err:
        return {"case": case_id, "error": {"case": case_id, **err.to_dict(), "path": err.path or entry["image"]}}
    except MemoryError:
        return {"case": case_id, "error": {"case": case_id, "path": entry["image"], "reason": "not enough memory",
                                           "fix": "run this case alone with --workers 1"}}
    except Exception as err:  # noqa: BLE001 - one odd case must not stop the batch
        return {"case": case_id, "error": {"case": case_id, "path": entry["image"],
                                           "reason": f"unexpected error: {type(err).__name__}: {str(err).strip().splitlines()[-1][:200] if str(err).strip() else ''}",
                                           "fix": "check this input; please report it if it is a valid scan"}}
    finally:
        if created:  # a failed case leaves no folder behind (nor its partial outputs)
            shutil.rmtree(out_dir, ignore_errors=True)


def _run_steps(config: dict, entry: dict, case_id: str, out_dir: Path, participant: dict | None, start: float) -> dict:
    """The steps of :func:`run_case` on one case; raises on failure."""
    from ldmonai.prep.image import read_image, write_image

    steps = _steps(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    case = Case(id=case_id, image=read_image(entry["image"]), source=entry["image"], out_dir=out_dir,
                meta={"participant": participant} if participant else {})
    attach_mask_and_labels(case, entry.get("mask"), entry.get("label"))
    timings = {}
    for spec, step in zip(config["steps"], steps):
        t = time.perf_counter()
        case = step(case)
        timings[spec["step"]] = round(time.perf_counter() - t, 3)
    case.files["image"] = str(write_image(case.image, out_dir / f"{case_id}_image.nii.gz"))
    if case.mask is not None:
        case.files["mask"] = str(write_image(case.mask, out_dir / f"{case_id}_mask.nii.gz"))
    if case.labels is not None:
        # the input's own naming (Case1_label.nii.gz), which the bundles' datalists expect
        case.files["labels"] = str(write_image(case.labels, out_dir / f"{case_id}_label.nii.gz"))
    record = {"case": case_id, "source": entry["image"], "files": case.files, "seconds": timings,
              "total_seconds": round(time.perf_counter() - start, 3), "slices": case.slices,
              "meta": case.meta, "config_digest": config_digest(config)}
    atomic_write_json(out_dir / DONE_NAME, record)  # last: its presence marks the case finished
    return record


def _finished(out_dir: Path, digest: str) -> dict | None:
    try:
        record = json.loads((out_dir / DONE_NAME).read_text())
    except (OSError, ValueError):
        return None
    return record if record.get("config_digest") == digest else None


def write_slice_index(records: list[dict], out_root: Path) -> Path | None:
    """``slices_index.csv`` and ``.json`` over every case's slices (None if no case has slices)."""
    rows = [dict(row) for r in records for row in r.get("slices", [])]
    for row in rows:  # relative paths: the index stays valid when the folder is moved
        for key in ("png", "nifti"):
            if key in row and Path(row[key]).is_absolute():
                row[key] = os.path.relpath(row[key], out_root)
    if not rows:
        return None
    table = atomic_write_csv(out_root / "slices_index.csv", rows)
    atomic_write_json(out_root / "slices_index.json", rows)
    return table


def run_pipeline(config, source: str | os.PathLike, out_dir: str | os.PathLike, workers: int = 1,
                 resume: bool = True, participants: str | os.PathLike | None = None,
                 progress: bool | None = None, scheduler: str | None = None) -> PrepReport:
    """Run a pipeline over every case of ``source`` into ``out_dir``.

    Args:
        config: YAML/JSON path, a dict with ``steps``, or a list of step entries.
        source: image file, folder (searched recursively) or datalist JSON.
        out_dir: one sub-folder per case; ``prep_report.json`` and slice indexes at the top.
        workers: cases processed in parallel; ITK threads are split between them.
        resume: skip cases already finished with the same steps.
        participants: BIDS ``participants.tsv`` or CSV; its row is attached to each case's slices.
        progress: progress bar (default: when stderr is a terminal).
        scheduler: None (local processes), ``"local"`` (a dask.distributed LocalCluster of ``workers``)
            or a Dask scheduler address; the same :func:`run_case` task runs on each (:mod:`ldmonai.parallel`).

    Returns:
        A :class:`PrepReport`; failed cases are listed in it and never raise.
    """
    start = time.perf_counter()
    config = load_config(config)
    digest = config_digest(config)
    entries = find_cases(source)
    out_root = Path(out_dir)
    src = Path(source).resolve()
    if src.is_dir() and (out_root.resolve() == src or src in out_root.resolve().parents):
        raise LdmonaiError("output folder lies inside the input folder", out_root,
                           "choose an OUT_DIR outside IN so that inputs are never touched")
    out_root.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out_root)
    from ldmonai.prep.slices import load_participants, subject_of, visit_of

    table = load_participants(participants) if participants else {}

    report = PrepReport(str(config.get("name", "pipeline")), str(out_root))
    records, jobs = [], []
    ids = case_ids(entries)
    for entry, cid in zip(entries, ids):
        done = _finished(out_root / cid, digest) if resume else None
        if done:
            report.skipped.append(cid)
            records.append(done)
            report.note_suspect(done)
            continue
        stem = image_stem(entry["image"])
        participant = dict(table.get(subject_of(stem), {}))
        participant.setdefault("subject", subject_of(stem))
        if visit_of(stem):
            participant.setdefault("visit", visit_of(stem))
        jobs.append((entry, cid, participant))

    workers = max(1, min(workers, len(jobs) or 1))
    threads = max(1, (os.cpu_count() or 1) // workers)
    show = sys.stderr.isatty() if progress is None else progress
    bar = None
    if show and jobs:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc=f"prep {report.config}", unit="case", file=sys.stderr, dynamic_ncols=True)

    def collect(result):
        if "error" in result:
            report.failed.append(result["error"])
        else:
            report.done.append(result["case"])
            records.append(result)
            report.note_suspect(result)
        if bar is not None:
            bar.update(1)

    with task_executor(workers, scheduler, initializer=_init_worker, initargs=(threads,)) as pool:
        for result in completed(pool, run_case, [(config, entry, cid, str(out_root), participant)
                                                  for entry, cid, participant in jobs]):
            collect(result)
    if bar is not None:
        bar.close()
    records.sort(key=lambda r: r["case"])
    report.done.sort()  # workers finish in any order; the report lists cases in one
    write_slice_index(records, out_root)
    write_output_datalist(records, dict(zip(ids, entries)), out_root)
    report.seconds = time.perf_counter() - start
    atomic_write_json(out_root / REPORT_NAME, report.to_dict())
    return report
