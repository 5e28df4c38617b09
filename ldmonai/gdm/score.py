"""Score a folder of synthetic CTs the way the SynthRAD2025 evaluation does, without the network.

``ldmonai gdm score PRED_DIR GT_DIR`` reads

- ground truth in the official evaluation layout, ``GT_DIR/ct/<id>.mha`` with
  ``GT_DIR/mask/<id>.mha``, or in the challenge's data layout, ``GT_DIR/**/<id>/ct.mha`` with
  ``mask.mha`` beside it (what ``ldmonai data phantoms`` and the GDM bundle use);
- predictions ``PRED_DIR/<id>.mha`` (the official naming), or ``<id>_sct.mha`` / ``.nii.gz`` as
  older ldmonai runs wrote them. Like the official scorer, a prediction whose stem is not an id
  is matched by its last 7 characters.

Each case is scored with :func:`ldmonai.metrics.synthrad.image_metrics` (MAE, PSNR, MS-SSIM,
equal to the official code: ``tests/test_synthrad_parity.py``) on the arrays as SimpleITK reads
them, inside the official mask. Predictions must lie on the ground truth's grid, as the official
scorer assumes; a prediction on another grid is a failed case with a clear reason, never
resampled silently. Writes ``scores.csv`` (one row per case) and ``scores.json`` (per case, mean
and sd) into ``PRED_DIR`` or ``--out``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from ldmonai.errors import LdmonaiError, UsageError
from ldmonai.io.atomic import atomic_write_csv, atomic_write_json
from ldmonai.io.names import image_stem

METRICS = ("mae", "psnr", "ms_ssim")
IMAGE_SUFFIXES = (".mha", ".nii.gz", ".nii", ".nrrd")  # volumes only: PNG previews sit beside predictions


def ground_truth(gt_dir: str | os.PathLike) -> dict[str, tuple[Path, Path | None]]:
    """``{id: (ct, mask or None)}`` from either layout (module docstring)."""
    root = Path(gt_dir)
    if not root.is_dir():
        raise UsageError("ground-truth folder does not exist", root, "pass GT_DIR with ct/<id>.mha and mask/<id>.mha")
    if (root / "ct").is_dir():
        cases = {}
        for ct in sorted(p for p in (root / "ct").iterdir() if p.name.endswith(IMAGE_SUFFIXES)):
            mask = next((root / "mask" / f"{image_stem(ct)}{s}" for s in IMAGE_SUFFIXES
                         if (root / "mask" / f"{image_stem(ct)}{s}").is_file()), None)
            cases[image_stem(ct)] = (ct, mask)
        return cases
    cases = {ct.parent.name: (ct, ct.parent / "mask.mha" if (ct.parent / "mask.mha").is_file() else None)
             for ct in sorted(root.rglob("ct.mha"))}
    if not cases:
        raise UsageError("no ground truth found", root,
                         "use the evaluation layout (ct/<id>.mha, mask/<id>.mha) or the data layout (<id>/ct.mha)")
    return cases


def predictions(pred_dir: str | os.PathLike, ids) -> dict[str, Path]:
    """``{id: prediction}`` for the ids that have one (exact stem, ``_sct`` suffix, last 7 characters)."""
    root = Path(pred_dir)
    if not root.is_dir():
        raise UsageError("prediction folder does not exist", root, "pass PRED_DIR with <id>.mha files")
    files = sorted(p for p in root.iterdir() if p.is_file() and p.name.endswith(IMAGE_SUFFIXES))
    found = {}
    for path in files:
        stem = image_stem(path)
        for candidate in (stem, stem.removesuffix("_sct"), stem[-7:]):
            if candidate in ids and candidate not in found:
                found[candidate] = path
                break
    return found


@dataclass
class ScoreReport:
    """Per-case scores and what could not be scored."""

    cases: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    missing: list = field(default_factory=list)

    def summary(self) -> dict:
        out = {}
        for m in METRICS:
            values = [c[m] for c in self.cases if math.isfinite(c[m])]
            if values:
                mean = sum(values) / len(values)
                sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
                out[m] = {"mean": mean, "sd": sd, "n": len(values)}
        return out

    def text(self) -> str:
        lines = [f"{'case':<16}{'MAE HU':>10}{'PSNR dB':>10}{'MS-SSIM':>10}"]
        lines += [f"{c['id']:<16}{c['mae']:>10.2f}{c['psnr']:>10.2f}{c['ms_ssim']:>10.4f}" for c in self.cases]
        names = {"mae": "MAE HU", "psnr": "PSNR dB", "ms_ssim": "MS-SSIM"}
        for m, stats in self.summary().items():
            digits = 4 if m == "ms_ssim" else 2
            lines.append(f"  {names[m]:<8} {stats['mean']:.{digits}f} ± {stats['sd']:.{digits}f} (mean ± sd, n = {stats['n']})")
        lines.append(f"{len(self.cases)} cases scored, {len(self.failed)} failed, "
                     f"{len(self.missing)} ground-truth cases without a prediction")
        if self.missing:
            lines.append(f"  WARNING no prediction for {', '.join(self.missing[:10])}{' ...' if len(self.missing) > 10 else ''}")
        lines += [f"  FAILED {LdmonaiError.from_dict(f)}" for f in self.failed]
        return "\n".join(lines)


def score_case(ct_path: Path, pred_path: Path, mask_path: Path | None) -> dict:
    """The official metrics of one case; raises :class:`LdmonaiError` naming the file at fault."""
    import SimpleITK as sitk

    from ldmonai.metrics.synthrad import image_metrics

    def read(path):
        try:
            return sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise LdmonaiError(f"cannot read image ({str(exc).strip().splitlines()[-1][:120]})", path,
                               "the file is corrupt or not an image") from None

    ct, pred = read(ct_path), read(pred_path)
    if ct.GetSize() != pred.GetSize():
        raise LdmonaiError(f"prediction is {pred.GetSize()} voxels, the ground truth {ct.GetSize()}", pred_path,
                           "write the prediction on the ground truth's grid (the official scorer compares voxels)")
    mask = sitk.GetArrayFromImage(read(mask_path)) if mask_path is not None else None
    values = image_metrics(sitk.GetArrayFromImage(ct), sitk.GetArrayFromImage(pred), mask, names=METRICS)
    return {m: float(values[m]) for m in METRICS}


def score_folder(pred_dir: str | os.PathLike, gt_dir: str | os.PathLike, out: str | os.PathLike | None = None,
                 require_all: bool = False) -> ScoreReport:
    """Score every ground-truth case that has a prediction. Cases without one are listed as
    missing (a test split scored against the whole data folder), or failed with ``require_all``
    (a challenge submission must cover every case)."""
    cases = ground_truth(gt_dir)
    preds = predictions(pred_dir, set(cases))
    report = ScoreReport()
    for case_id, (ct, mask) in cases.items():
        if case_id not in preds and not require_all:
            report.missing.append(case_id)
            continue
        if case_id not in preds:
            report.failed.append({"path": str(Path(pred_dir) / f"{case_id}.mha"), "reason": "no prediction for this case",
                                  "fix": "run inference on it, or score a folder that holds <id>.mha for every case"})
            continue
        try:
            report.cases.append({"id": case_id, "prediction": str(preds[case_id]), **score_case(ct, preds[case_id], mask)})
        except LdmonaiError as exc:
            report.failed.append(exc.to_dict())
    target = Path(out) if out else Path(pred_dir)
    if report.cases:
        atomic_write_csv(target / "scores.csv", report.cases)
    finite = [{k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in c.items()} for c in report.cases]
    atomic_write_json(target / "scores.json", {"cases": finite, "summary": report.summary(), "failed": report.failed, "missing": report.missing,
                                               "definition": "SynthRAD2025 image_metrics.py (commit 17cac47)"})
    return report
