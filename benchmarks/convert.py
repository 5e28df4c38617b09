"""Benchmark: DICOM to NIfTI conversion, ldmonai against dcm2niix and dicom2nifti, one run.

Each converter runs as a fresh process on the same input (cold start included: that is what
a user waits for), writing uncompressed NIfTI to a fresh folder. The converters take turns,
one run each per round, so that a slow spell of a shared machine falls on all of them.
Reported: median wall time over --repeats rounds, peak resident memory of the converter
process (for ldmonai with workers, the largest single process), the number of NIfTI files
written, and ratios against the baselines measured in the same run.

ldmonai runs as the ``ldmonai`` command that ``pip install`` writes, with its modules
byte-compiled first, as a wheel install has them (where PYTHONDONTWRITEBYTECODE is set, an
editable checkout would otherwise compile ldmonai's sources again in every run).

    python benchmarks/convert.py [IN_DIR] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.measure import cpu_name  # noqa: E402

DEFAULT_IN = ROOT.parent / "shared" / "data" / "dcm_qa_nih" / "In"

# Runs the command and prints its peak RSS (KiB) as the last line: RUSAGE_CHILDREN of a
# wrapper that has exactly one child is that child's peak (the max over its own children).
WRAPPER = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, "
           "stderr=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
           "sys.exit(r.returncode)")
DICOM2NIFTI = ("import sys, dicom2nifti, dicom2nifti.settings as s; s.disable_validate_slice_increment(); "
               "dicom2nifti.convert_directory(sys.argv[1], sys.argv[2], compression=False, reorient=False)")


def tools(in_dir: Path) -> dict:
    """The commands, by name. Two dcm2niix baselines: the bare binary inside the pinned wheel (the
    strict one: the ratios are against it), and the ``dcm2niix`` console script that ``pip install``
    puts on PATH, which is what a user types (a Python launcher in front of the same binary)."""
    import dcm2niix as wheel

    script = shutil.which("dcm2niix") or str(Path(sys.executable).parent / "dcm2niix")
    command = Path(sys.executable).parent / "ldmonai"
    launcher = [str(command)] if command.exists() else [sys.executable, "-m", "ldmonai"]
    ldmonai = [*launcher, "prep", "convert", str(in_dir), "{out}", "--no-compress", "--quiet"]
    return {
        "dcm2niix": [wheel.bin, "-z", "n", "-b", "y", "-o", "{out}", str(in_dir)],
        "dcm2niix (console script)": [script, "-z", "n", "-b", "y", "-o", "{out}", str(in_dir)],
        "dicom2nifti": [sys.executable, "-c", DICOM2NIFTI, str(in_dir), "{out}"],
        "ldmonai (1 worker)": ldmonai + ["--workers", "1"],
        "ldmonai (2 workers)": ldmonai + ["--workers", "2"],
        "ldmonai (2, adjacent)": ldmonai + ["--workers", "2", "--adjacent"],
    }


def run_once(cmd: list[str]) -> tuple[float, float, int, int]:
    with tempfile.TemporaryDirectory() as out:
        argv = [c.replace("{out}", out) for c in cmd]
        start = time.perf_counter()
        res = subprocess.run([sys.executable, "-c", WRAPPER, *argv], capture_output=True, text=True)
        wall = time.perf_counter() - start
        peak_mb = int(res.stdout.strip().splitlines()[-1]) / 1024 if res.stdout.strip() else float("nan")
        written = len(list(Path(out).rglob("*.nii")))
        return wall, peak_mb, written, res.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("in_dir", nargs="?", default=str(DEFAULT_IN))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    in_dir = Path(args.in_dir)
    if not in_dir.is_dir():
        print(f"input {in_dir} not found: pass IN_DIR (the dcm_qa_nih inputs live in ../shared/data)")
        return 2
    n_files = sum(1 for p in in_dir.rglob("*") if p.is_file())
    print(f"DICOM to NIfTI on {in_dir} ({n_files} files)")
    print(f"hardware: {cpu_name()}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}")
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "ldmonai")], check=True,
                   stdout=subprocess.DEVNULL)
    commands = tools(in_dir)
    runs: dict[str, list] = {name: [] for name in commands}
    for name, cmd in commands.items():
        run_once(cmd)  # warm the page cache once; not timed
    for _ in range(args.repeats):
        for name, cmd in commands.items():
            runs[name].append(run_once(cmd))
    results = {}
    for name, rs in runs.items():
        walls = [r[0] for r in rs]
        results[name] = {"wall_s": statistics.median(walls), "min_s": min(walls),
                         "peak_mb": max(r[1] for r in rs), "nifti": rs[-1][2], "rc": max(r[3] for r in rs)}
    base, d2n = results["dcm2niix"], results["dicom2nifti"]
    print(f"\n{'converter':<27}{'median s':>10}{'min s':>8}{'peak MB':>9}{'NIfTI':>7}"
          f"{'x dcm2niix':>12}{'x dicom2nifti':>15}")
    for name, r in results.items():
        print(f"{name:<27}{r['wall_s']:>10.3f}{r['min_s']:>8.3f}{r['peak_mb']:>9.1f}{r['nifti']:>7}"
              f"{r['wall_s'] / base['wall_s']:>12.2f}{r['wall_s'] / d2n['wall_s']:>15.2f}"
              + ("" if r["rc"] == 0 else f"   (exit {r['rc']})"))
    if args.json:
        Path(args.json).write_text(json.dumps({"input": str(in_dir), "cpu": cpu_name(),
                                               "cpus": os.cpu_count(), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
