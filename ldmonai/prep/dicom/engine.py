"""dcm2niix as the conversion engine: one call per series, outputs published atomically.

Each task hands dcm2niix the files of one series (a list file, in a private folder that carries
the input folder's name, so that ``%f`` in a name means what it means in a call on the whole
tree) and an output folder of its own. dcm2niix then writes exactly the files it writes
for that series in a call on the whole tree with the same options: every vendor rule, every
``_e2``, ``_ph``, ``_Tilt_1``, ``_Eq_1``, ``_ADC`` variant and every sidecar field is its own.

The parent process then publishes the outputs into OUT with ``os.replace`` (atomic within a
file system), resolving name clashes between series the way dcm2niix does (``-w 2``: the
letters ``a`` to ``z`` appended to the clashing name), and writes a done-marker last.
"""

from __future__ import annotations

import hashlib
import os
import shutil
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


def binary() -> str:
    """Path of the dcm2niix binary from the pinned ``dcm2niix`` wheel (or PATH as a fallback)."""
    try:
        import dcm2niix

        path = dcm2niix.bin
    except ImportError:
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


def series_key(uid: str, name: str, opts: list[str]) -> str:
    """Stable id of one series' conversion (reveals no UID): what resume matches on."""
    return hashlib.sha1("\0".join([uid, name, *opts]).encode()).hexdigest()[:16]


def split_name(name: str) -> tuple[str, str]:
    """``("sub/x_e2", ".nii.gz")`` from ``"sub/x_e2.nii.gz"``."""
    for ext in EXTENSIONS:
        if name.endswith(ext):
            return name[: -len(ext)], ext
    return name, ""


def run_series(job: dict) -> dict:
    """Convert one series with dcm2niix into ``job["tmp"]/out``; never raises.

    Args:
        job: ``id``, ``files`` (paths), ``source`` (their common folder, for reports),
            ``folder_name`` (the input root's name, for ``%f``),
            ``name`` (the ``-f`` template), ``options``, ``tmp`` (a private folder inside OUT),
            ``timeout`` (seconds or None).

    Returns:
        ``{"id", "outputs": [relative paths in tmp/out], "returncode", "log", "seconds"}`` or, when
        the engine could not run, ``{"id", "error": {path, reason, fix}}``.
    """
    start = time.perf_counter()
    tmp = Path(job["tmp"])
    shutil.rmtree(tmp, ignore_errors=True)
    # dcm2niix reads a list of files from a .txt input in single-file mode (-s y); %f is then the
    # name of the list's folder, which carries the input root's name as in a call on the tree.
    listing = tmp / "in" / job["folder_name"] / "files.txt"
    dst = tmp / "out"
    listing.parent.mkdir(parents=True)
    dst.mkdir()
    folder = job["source"]
    try:
        listing.write_text("".join(os.path.abspath(f) + "\n" for f in job["files"]))
        cmd = [binary(), *job["options"], "-s", "y", "-f", job["name"], "-o", str(dst), str(listing)]
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", preexec_fn=die_with_parent,
                              timeout=job.get("timeout"))
    except subprocess.TimeoutExpired:
        return {"id": job["id"], "error": {"path": folder, "reason": f"dcm2niix ran past {job['timeout']} s",
                                           "fix": "convert this series alone, or raise --timeout"}}
    except OSError as exc:
        return {"id": job["id"], "error": {"path": folder, "reason": f"could not run dcm2niix ({exc})",
                                           "fix": "check that OUT_DIR is writable and dcm2niix is installed"}}
    outputs = sorted(str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file())
    log = [line.strip() for line in (proc.stdout + proc.stderr).splitlines()
           if line.startswith(("Error", "Warning", "Unsupported")) or "rror:" in line]
    return {"id": job["id"], "outputs": outputs, "returncode": proc.returncode, "log": log,
            "seconds": round(time.perf_counter() - start, 3), "source": folder, "files": len(job["files"])}


def _taken(out_dir: Path, stem: str, exts: list[str]) -> bool:
    return any((out_dir / f"{stem}{ext}").exists() for ext in {*exts, ".nii", ".nii.gz"})


def publish(result: dict, tmp: Path, out_root: Path) -> list[str]:
    """Move one series' outputs from ``tmp/out`` into ``out_root``; returns the final paths.

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
            os.replace(tmp / "out" / f"{stem}{ext}", dest)
            final.append(str(dest))
    shutil.rmtree(tmp, ignore_errors=True)
    return final
