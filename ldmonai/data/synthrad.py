"""Datalists from the SynthRAD2025 layout as published: ``Task1/{HN,TH,AB}/<patient>/{mr,ct,mask}.mha``.

Task 1 is MR-to-CT; a ``Task2`` (CBCT) folder has the same shape with ``cbct.mha`` and is
read with ``source="cbct"``. The split is explicit and reproducible: patients are sorted
by region and id, and the fractions are taken in that order, never from a listing's order.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

from ldmonai.errors import LdmonaiError, UsageError

logger = logging.getLogger(__name__)

REGIONS = ("HN", "TH", "AB")
__all__ = ["REGIONS", "paired_datalist", "synthrad_datalist"]


def _split_sizes(n: int, val_fraction: float, test_fraction: float, region: str) -> tuple[int, int]:
    """Validation and test counts of a region of ``n`` patients. A split asked for gets at least
    one patient while training keeps one; where that is impossible, a warning says so (a small
    region silently without test cases would bias every per-region score)."""
    n_test = int(round(n * test_fraction))
    n_val = int(round(n * val_fraction))
    if test_fraction > 0 and n_test == 0 and n - n_val >= 2:
        n_test = 1
    if val_fraction > 0 and n_val == 0 and n - n_test >= 2:
        n_val = 1
    short = [name for name, frac, count in (("validation", val_fraction, n_val), ("test", test_fraction, n_test))
             if frac > 0 and count == 0]
    if short:
        logger.warning("SynthRAD region %s has %d patient(s): no %s case from it (training keeps one)",
                       region, n, " or ".join(short))
    return n_val, n_test


def synthrad_datalist(
    root: str | os.PathLike,
    regions: Sequence[str] = REGIONS,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    source: str = "mr",
) -> dict[str, list[dict]]:
    """``{"training": [...], "validation": [...], "test": [...]}`` with absolute paths.

    Args:
        root: the ``Task1`` folder (or its parent).
        regions: anatomical regions to include; missing regions are skipped.
        val_fraction, test_fraction: per region, taken from the end of the sorted patients.
        source: the input image's stem (``mr`` for Task 1, ``cbct`` for Task 2, ``ct`` for
            sparse-view CT, whose input is the CT itself).

    Entries hold ``image`` (the source), ``label`` (``ct.mha``; absent for inference-only
    folders), ``mask`` where present (the checks fall back to a body mask otherwise),
    ``case`` and ``region``.
    """
    root = Path(root).resolve()  # absolute: the entries must not depend on the working directory
    if (root / "Task1").is_dir() and source in ("mr", "ct"):
        root = root / "Task1"
    if not root.is_dir():
        raise UsageError("SynthRAD folder not found", root, "pass the Task1 folder that holds HN/, TH/ or AB/")
    splits: dict[str, list[dict]] = {"training": [], "validation": [], "test": []}
    found = False
    for region in regions:
        folder = root / region
        if not folder.is_dir():
            continue
        cases = []
        for patient in sorted(p for p in folder.iterdir() if p.is_dir()):
            image = patient / f"{source}.mha"
            if not image.is_file():
                continue
            entry = {"image": str(image), "case": patient.name, "region": region}
            for key, name in (("label", "ct.mha"), ("mask", "mask.mha")):
                if (patient / name).is_file():
                    entry[key] = str(patient / name)
            cases.append(entry)
        found = found or bool(cases)
        n_val, n_test = _split_sizes(len(cases), val_fraction, test_fraction, region)
        n_train = len(cases) - n_val - n_test
        splits["training"] += cases[:n_train]
        splits["validation"] += cases[n_train : n_train + n_val]
        splits["test"] += cases[n_train + n_val :]
    if not found:
        raise LdmonaiError(
            f"no <patient>/{source}.mha under any of {list(regions)}", root, "point at the Task1 folder of the SynthRAD2025 release"
        )
    return splits


def paired_datalist(
    source: str | os.PathLike, split: str = "training", val_fraction: float = 0.2, test_fraction: float = 0.0
) -> list[dict]:
    """One split of paired cases from a SynthRAD2025 folder or a datalist JSON.

    A JSON datalist gives its entries (``image``, ``label``, optional ``mask``) with paths
    resolved against its folder; a folder is read as the SynthRAD layout and split by
    :func:`synthrad_datalist`.
    """
    from ldmonai.data.datalist import load_datalist

    source = Path(source)
    if source.suffix.lower() == ".json":
        return load_datalist(source, split, keys=("image", "label"), optional_keys=("mask",))
    cases = synthrad_datalist(source, val_fraction=val_fraction, test_fraction=test_fraction)[split]
    if not cases:
        raise LdmonaiError(f"the {split!r} split is empty", source, "add cases or change val_fraction / test_fraction")
    return cases
