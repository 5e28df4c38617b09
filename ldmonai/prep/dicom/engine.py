"""dcm2niix as the conversion engine: whole series per call, outputs published atomically.

Each task hands dcm2niix the files of one or more whole series (a list file, in a private folder
that carries the input folder's name, so that ``%f`` in a name means what it means in a call on
the whole tree) and an output folder of its own. dcm2niix then writes exactly the files it
writes for those series in a call on the whole tree with the same options: every vendor rule,
every ``_e2``, ``_ph``, ``_Tilt_1``, ``_Eq_1``, ``_ADC`` variant and every sidecar field is its own.

Why several series share a call (:func:`run_batch`): a dcm2niix call costs about 19 ms before
its files (the fit in :mod:`.convert`), so eight one-series calls on dcm_qa_nih cost 0.16 s of
CPU where one call costs 0.11 s. A batch call names its outputs ``%j/<name>`` (``%j`` is
dcm2niix's SeriesInstanceUID field), which sorts them back into series; a series that comes out
of a batch in any doubt (the call failed, or it wrote nothing for the series) is converted
again in a call of its own (:func:`run_series`), which is what its report entry then says.

The parent process then publishes the outputs into OUT with ``os.replace`` (atomic within a
file system), resolving name clashes between series the way dcm2niix does (``-w 2``: the
letters ``a`` to ``z`` appended to the clashing name), and writes a done-marker last.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

from ldmonai.errors import UsageError
from ldmonai.parallel import die_with_parent

# Options that ldmonai sets itself, per series; the others pass through to every call.
RESERVED = {"-o", "-f", "-w", "-r", "-s", "-q", "-n", "-u", "-g", "-h", "-d", "--version", "--progress", "--xml"}
# dcm2niix's output extensions; files of one output share the stem before these.
EXTENSIONS = (".nii.gz", ".nii", ".json", ".bval", ".bvec", ".nrrd", ".nhdr", ".raw.gz", ".mgz", ".jnii",
              ".bnii", ".txt", ".tsv")
TMP_DIR = ".ldmonai-tmp-series"
PLACEHOLDER = "%j/x"  # a batch's -f when its series' names hold no dcm2niix field (see batch_name)


def binary() -> str:
    """Path of the dcm2niix binary from the pinned ``dcm2niix`` wheel (or PATH as a fallback)."""
    try:
        import dcm2niix

        path = dcm2niix.bin
    except ImportError:
        import shutil

        path = shutil.which("dcm2niix")
    if not path or not os.access(path, os.X_OK):
        raise UsageError("the dcm2niix engine is not installed", fix="pip install ldmonai (it pins dcm2niix)")
    return path


def version() -> str:
    """Version of the engine, from the wheel's metadata (no process start)."""
    try:
        import dcm2niix

        return f"v{dcm2niix.__version__}"
    except (ImportError, AttributeError):
        out = subprocess.run([binary(), "--version"], capture_output=True, text=True, errors="replace")
        return next((w for w in (out.stdout + out.stderr).split() if w.startswith("v1.")), "unknown")


def options(compress: bool = True, ignore_derived: bool = False, extra: list[str] | None = None) -> list[str]:
    """The dcm2niix options for every series: BIDS sidecars on, ``-z``, ``-i``, then ``extra``.

    ``extra`` may not set what ldmonai sets per series (:data:`RESERVED`).
    """
    extra = list(extra or [])
    clash = sorted(set(extra) & RESERVED)
    if clash:
        raise UsageError(f"dcm2niix option(s) {' '.join(clash)} are set by ldmonai per series",
                         fix="use --template for -f; OUT_DIR for -o; ldmonai resumes and resolves name clashes itself")
    return ["-b", "y", "-z", "y" if compress else "n", "-i", "y" if ignore_derived else "n", *extra]


try:  # the same digest as hashlib.sha1 without loading OpenSSL (2.5 ms of a 0.1-s run)
    from _sha1 import sha1 as _sha1
except ImportError:  # pragma: no cover - Python builds without the module
    from hashlib import sha1 as _sha1


def series_key(uid: str, name: str, opts: list[str]) -> str:
    """Stable id of one series' conversion (reveals no UID): what resume matches on."""
    return _sha1("\0".join([uid, name, *opts]).encode()).hexdigest()[:16]


def split_name(name: str) -> tuple[str, str]:
    """``("sub/x_e2", ".nii.gz")`` from ``"sub/x_e2.nii.gz"``."""
    for ext in EXTENSIONS:
        if name.endswith(ext):
            return name[: -len(ext)], ext
    return name, ""


def _dcm2niix(files: list[str], name: str, options: list[str], folder_name: str, tmp: str,
              timeout: float | None) -> tuple[subprocess.CompletedProcess, str]:
    """One dcm2niix call on ``files`` into ``tmp/out``: ``(the finished process, tmp/out)``.

    dcm2niix reads a list of files from a .txt input in single-file mode (-s y); ``%f`` is then
    the name of the list's folder, which carries the input root's name as in a call on the tree.
    Raises ``subprocess.TimeoutExpired`` and ``OSError``.
    """
    rmtree(tmp)
    listing_dir, dst = os.path.join(tmp, "in", folder_name), os.path.join(tmp, "out")
    os.makedirs(listing_dir)
    os.mkdir(dst)
    listing = os.path.join(listing_dir, "files.txt")
    with open(listing, "w") as fh:
        fh.write("".join(os.path.abspath(f) + "\n" for f in files))
    cmd = [binary(), *options, "-s", "y", "-f", name, "-o", dst, listing]
    return subprocess.run(cmd, capture_output=True, text=True, errors="replace", preexec_fn=die_with_parent,
                          timeout=timeout), dst


def _files_below(folder: str) -> list[str]:
    """Paths of the files below ``folder``, relative to it, sorted."""
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


def run_series(job: dict) -> dict:
    """Convert one series with dcm2niix, in a call of its own, into ``job["tmp"]/out``; never raises.

    Args:
        job: ``id``, ``files`` (paths), ``source`` (their common folder, for reports),
            ``folder_name`` (the input root's name, for ``%f``),
            ``name`` (the ``-f`` template), ``options``, ``tmp`` (a private folder inside OUT),
            ``timeout`` (seconds or None).

    Returns:
        ``{"id", "outputs": [relative output paths], "sources": {output: where dcm2niix wrote it},
        "returncode", "log", "seconds", "source", "files"}`` or, when the engine could not run,
        ``{"id", "error": {path, reason, fix}}``.
    """
    start = time.perf_counter()
    folder = job["source"]
    try:
        proc, dst = _dcm2niix(job["files"], job["name"], job["options"], job["folder_name"], job["tmp"],
                              job.get("timeout"))
    except subprocess.TimeoutExpired:
        return {"id": job["id"], "error": {"path": folder, "reason": f"dcm2niix ran past {job['timeout']} s",
                                           "fix": "convert this series alone, or raise --timeout"}}
    except OSError as exc:
        return {"id": job["id"], "error": {"path": folder, "reason": f"could not run dcm2niix ({exc})",
                                           "fix": "check that OUT_DIR is writable and dcm2niix is installed"}}
    outputs = _files_below(dst)
    return {"id": job["id"], "outputs": outputs, "sources": {rel: os.path.join(dst, rel) for rel in outputs},
            "returncode": proc.returncode, "log": _log_lines(proc), "seconds": round(time.perf_counter() - start, 3),
            "source": folder, "files": len(job["files"])}


def batch_name(names: list[str]) -> str | None:
    """The ``-f`` of one call that converts series whose own names are ``names``, or None when
    they need calls of their own.

    A name that every series shares (e.g. ``%p_%s``) goes to dcm2niix as it is, below ``%j/``.
    Names without dcm2niix fields differ only in ldmonai's text: dcm2niix then writes
    ``%j/x...`` and :func:`run_batch` puts each series' own name in place of ``x``. Mixed
    names (``{PatientID}_%p``) differ in both and keep one call per series.
    """
    if len(set(names)) == 1:
        return f"%j/{names[0]}"
    if not any("%" in n for n in names):
        return PLACEHOLDER
    return None


def _as_dcm2niix_writes(name: str) -> str:
    """A %-free name the way dcm2niix writes it (nii_createFilename): runs of ``_`` become one,
    and a leading dot becomes ``_``. ldmonai's sanitised names leave it nothing else to change."""
    name = re.sub(r"_+", "_", name)
    return "_" + name[1:] if name.startswith(".") else name


def run_batch(batch: dict) -> list[dict]:
    """Convert several whole series in one dcm2niix call; one result per series, as
    :func:`run_series` returns it (never raises).

    Args:
        batch: ``jobs`` (the series' :func:`run_series` jobs, each with its ``uid``), ``name`` (the
            call's ``-f``, from :func:`batch_name`), ``options``, ``folder_name``, ``tmp`` (a
            private folder inside OUT), ``timeout`` (seconds for each series, or None).

    Each series' outputs stay in the batch's ``%j`` folder under the names a call of its own
    would give them (``sources``), for :func:`publish` to move. Series the batch does not settle
    (exit status other than 0, a timeout, no output for the series) are converted alone.
    """
    jobs = batch["jobs"]
    if len(jobs) == 1:
        return [run_series(jobs[0])]
    start = time.perf_counter()
    timeout = batch["timeout"] * len(jobs) if batch.get("timeout") else None
    files = [f for j in jobs for f in j["files"]]
    try:
        proc, dst = _dcm2niix(files, batch["name"], batch["options"], batch["folder_name"], batch["tmp"], timeout)
    except (subprocess.TimeoutExpired, OSError):
        proc = dst = None
    seconds = round(time.perf_counter() - start, 3)
    log = _log_lines(proc) if proc is not None else []  # the call's lines, shared by its series
    results = []
    for job in jobs:
        found = os.path.join(dst, job["uid"]) if proc is not None and proc.returncode == 0 else None
        produced = _files_below(found) if found else []
        if not produced:
            results.append(run_series(job))
            continue
        own = _as_dcm2niix_writes(job["name"]) if batch["name"] == PLACEHOLDER else None
        sources = {(own + rel[1:] if own else rel): os.path.join(found, rel) for rel in produced}
        results.append({"id": job["id"], "outputs": sorted(sources), "sources": sources, "returncode": 0,
                        "log": log, "seconds": seconds, "source": job["source"],
                        "files": len(job["files"]), "batch": len(jobs)})
    return results


def _log_lines(proc) -> list[str]:
    return [line.strip() for line in (proc.stdout + proc.stderr).splitlines()
            if line.startswith(("Error", "Warning", "Unsupported")) or "rror:" in line]


def rmtree(path) -> None:
    """Remove one of ldmonai's private temporary trees, if it exists, ignoring errors.

    Bottom-up ``os.walk`` rather than ``shutil.rmtree``: importing shutil (with bz2 and lzma)
    costs 2 ms of the 0.1-s dcm_qa_nih run, and these trees hold only ldmonai's list files and
    dcm2niix's emptied output folders. Links are unlinked, never followed.
    """
    for folder, dirs, files in os.walk(path, topdown=False):
        for name in files + dirs:
            entry = os.path.join(folder, name)
            try:
                os.rmdir(entry) if name in dirs and not os.path.islink(entry) else os.unlink(entry)
            except OSError:
                pass
    try:
        os.rmdir(path)
    except OSError:
        pass


def _taken(out_dir: Path, stem: str, exts: list[str]) -> bool:
    return any((out_dir / f"{stem}{ext}").exists() for ext in {*exts, ".nii", ".nii.gz"})


def publish(result: dict, out_root: Path) -> list[str]:
    """Move one series' outputs (``result["sources"]``) into ``out_root``; returns the final paths.

    Outputs that share a stem (NIfTI, JSON, bval, bvec) move together; when the stem is taken
    by another series, the letters a to z are appended to it, as dcm2niix does within one call.
    """
    groups: dict[str, list[str]] = {}
    for rel in result["outputs"]:
        stem, ext = split_name(rel)
        groups.setdefault(stem, []).append(ext)
    final = []
    for stem, exts in groups.items():
        target_dir = (out_root / stem).parent
        target_dir.mkdir(parents=True, exist_ok=True)
        base, chosen = Path(stem).name, Path(stem).name
        for letter in "abcdefghijklmnopqrstuvwxyz":
            if not _taken(target_dir, chosen, exts):
                break
            chosen = base + letter
        for ext in sorted(exts, key=lambda e: e == ".json"):  # the sidecar last
            dest = target_dir / f"{chosen}{ext}"
            os.replace(result["sources"][f"{stem}{ext}"], dest)
            final.append(str(dest))
    return final
