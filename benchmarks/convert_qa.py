"""Validate ``ldmonai prep convert`` on dcm2niix validation suites in the dcm_qa layout.

A suite folder holds ``In/`` (DICOM), ``Ref/`` (the NIfTI and JSON that dcm2niix wrote when the
suite was made) and ``batch.sh`` (the dcm2niix options of the suite). For each suite this runs,
in the same run, a direct call of the pinned dcm2niix binary with the suite's options and
``ldmonai prep convert`` with the same options (``--workers``), then compares every reference
file the way ``batch.sh`` does: ``diff -b``, ignoring the lines with ``ConversionSoftwareVersion``
or ``BidsGuess``, and NIfTI byte for byte (and, apart, the NIfTI voxel bytes after the header). It prints ``matched X/N`` for both, one line per
mismatch, and whether ldmonai's output tree equals dcm2niix's file for file.

    python benchmarks/convert_qa.py /path/to/dcm_qa /path/to/dcm_qa_ge [--workers 2] [--json qa.json]

Suites: neurolabusc/dcm_qa, dcm_qa_stc, dcm_qa_ge, dcm_qa_uih, dcm_qa_ct on GitHub. Never commit them.
"""

from __future__ import annotations

import argparse
import json
import shlex
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ldmonai.prep.dicom import convert_tree  # noqa: E402
from ldmonai.prep.dicom import engine  # noqa: E402

IGNORED_LINES = ("ConversionSoftwareVersion", "BidsGuess")


def suite_options(batch: Path) -> list[str]:
    """The dcm2niix options of a suite's ``batch.sh`` (those before ``-o``)."""
    for line in batch.read_text().splitlines():
        if line.lstrip().startswith("#") or "$exenam" not in line or " -o " not in line:
            continue
        text = line.split("$exenam", 1)[1].split(" -o ", 1)[0].replace('"', " ").replace("'", " ")
        return [w for w in shlex.split(text) if not w.startswith("$")]
    raise SystemExit(f"{batch}: no dcm2niix command line found")


def to_ldmonai(opts: list[str]) -> dict:
    """The suite's options as convert_tree arguments (-f, -z, -i, -b become its own)."""
    kwargs = {"template": "%f_%p_%t_%s", "compress": False, "ignore_derived": False, "engine_args": []}
    it = iter(opts)
    for opt in it:
        if opt in ("-f", "-z", "-i", "-b"):
            value = next(it)
            if opt == "-f":
                kwargs["template"] = value
            elif opt == "-z":
                kwargs["compress"] = value != "n"
            elif opt == "-i":
                kwargs["ignore_derived"] = value == "y"
        else:
            kwargs["engine_args"].append(opt)
    return kwargs


def _json_lines(path: Path) -> list[str]:
    return [" ".join(line.split()) for line in path.read_text(errors="replace").splitlines()
            if not any(k in line for k in IGNORED_LINES)]


def same(ref: Path, out: Path) -> bool:
    if not out.is_file():
        return False
    if ref.suffix == ".json":
        return _json_lines(ref) == _json_lines(out)
    return ref.read_bytes() == out.read_bytes()


def same_voxels(ref: Path, out: Path) -> bool:
    """NIfTI-1 voxel bytes equal (the header, from an older dcm2niix, may differ)."""
    if not out.is_file():
        return False
    a, b = ref.read_bytes(), out.read_bytes()
    off_a, off_b = (int(struct.unpack("<f", x[108:112])[0]) for x in (a, b))
    return a[off_a:] == b[off_b:]


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
            and p.name != "conversion_report.json"}


def run_suite(suite: Path, workers: int) -> dict:
    opts = suite_options(suite / "batch.sh")
    refs = sorted(p for p in (suite / "Ref").rglob("*") if p.is_file() and not p.name.startswith("."))
    with tempfile.TemporaryDirectory() as tmp:
        direct, ours = Path(tmp) / "dcm2niix", Path(tmp) / "ldmonai"
        direct.mkdir()
        t = time.perf_counter()
        subprocess.run([engine.binary(), *opts, "-o", str(direct), str(suite / "In")], capture_output=True)
        t_direct = time.perf_counter() - t
        t = time.perf_counter()
        report = convert_tree(suite / "In", ours, workers=workers, progress=False, **to_ldmonai(opts))
        t_ours = time.perf_counter() - t
        result = {"suite": suite.name, "options": " ".join(opts), "references": len(refs),
                  "dcm2niix_seconds": round(t_direct, 2), "ldmonai_seconds": round(t_ours, 2),
                  "ldmonai_failed": len(report.failed)}
        for name, out in (("dcm2niix", direct), ("ldmonai", ours)):
            misses = [str(r.relative_to(suite / "Ref")) for r in refs if not same(r, out / r.relative_to(suite / "Ref"))]
            result[f"{name}_matched"] = len(refs) - len(misses)
            result[f"{name}_mismatches"] = misses
            niftis = [r for r in refs if r.suffix == ".nii"]
            result["nifti_references"] = len(niftis)
            result[f"{name}_voxels_matched"] = sum(same_voxels(r, out / r.relative_to(suite / "Ref")) for r in niftis)
        a, b = tree(direct), tree(ours)
        result["identical_trees"] = a == b
        result["tree_differences"] = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("suites", nargs="+", type=Path, help="folders in the dcm_qa layout (In/, Ref/, batch.sh)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)
    results = []
    print(f"dcm2niix {engine.version()}, ldmonai with {args.workers} workers")
    for suite in args.suites:
        if not (suite / "In").is_dir() or not (suite / "Ref").is_dir() or not (suite / "batch.sh").is_file():
            print(f"{suite}: not in the dcm_qa layout (In/, Ref/, batch.sh)", file=sys.stderr)
            return 2
        r = run_suite(suite, args.workers)
        results.append(r)
        print(f"{r['suite']} ({r['options']}): dcm2niix matched {r['dcm2niix_matched']}/{r['references']}, "
              f"ldmonai matched {r['ldmonai_matched']}/{r['references']}; voxels equal in "
              f"{r['dcm2niix_voxels_matched']} and {r['ldmonai_voxels_matched']} of {r['nifti_references']} NIfTI; output trees identical: "
              f"{r['identical_trees']}; {r['dcm2niix_seconds']} s vs {r['ldmonai_seconds']} s")
        for name in ("dcm2niix", "ldmonai"):
            for miss in r[f"{name}_mismatches"]:
                print(f"  {name} mismatch: {miss}")
        for diff in r["tree_differences"]:
            print(f"  ldmonai differs from dcm2niix: {diff}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(r["identical_trees"] and r["ldmonai_matched"] == r["dcm2niix_matched"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
