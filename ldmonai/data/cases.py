"""What an inference run works through: find the images, drop the unreadable, skip the done.

A batch never stops on one bad file: unreadable or NaN-filled images are listed in
``skipped_cases.json`` with the reason and left out, and cases whose outputs already exist
are skipped, so re-running the same command resumes an interrupted run.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ldmonai.data.datalist import load_datalist
from ldmonai.errors import LdmonaiError, UsageError, first_line
from ldmonai.io.atomic import atomic_write_json
from ldmonai.io.names import IMAGE_SUFFIXES, case_stem, image_stem

logger = logging.getLogger(__name__)


def find_images(source: str | os.PathLike, split: str = "test", key: str = "image",
                fractions: tuple[float, float] | None = None, stems: Sequence[str] = ("mr", "cbct")) -> list[dict]:
    """Cases from a datalist JSON (its ``split``), a single image file, or a folder of images.

    Folders are listed in sorted order, never in the filesystem's order. A folder in the
    SynthRAD layout (``<region>/<patient>/mr.mha``) is split like training splits it when
    ``fractions`` (validation, test) are given: ``split`` picks one part (``"all"``: every case).
    ``stems`` names the image taken from each patient folder (``("ct",)`` for sparse-view CT).
    """
    source = Path(source)
    if source.is_file() and source.suffix.lower() == ".json":
        return [{key: e[key]} for e in load_datalist(source, split, keys=(key,))]
    if source.is_file():
        return [{key: str(source)}]
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES))
        if not files:
            # SynthRAD-style patient folders: <region>/<patient>/mr.mha (or cbct.mha)
            files = sorted(p for p in source.rglob("*") if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES)
                           and image_stem(p).lower() in stems)
            if files and fractions is not None and split != "all":
                from ldmonai.data.synthrad import synthrad_datalist

                kind = image_stem(files[0]).lower()
                parts = synthrad_datalist(source, val_fraction=fractions[0], test_fraction=fractions[1], source=kind)
                if split not in parts:
                    raise UsageError(f"unknown split {split!r}", source, f"use one of {sorted(parts)} or 'all'")
                logger.info("%s: the %r split of the SynthRAD folder, %d of %d cases", source, split,
                            len(parts[split]), len(files))
                files = [Path(e["image"]) for e in parts[split]]
        if not files:
            raise LdmonaiError(
                "folder holds no images", source, f"put images with one of {', '.join(IMAGE_SUFFIXES)} in it"
            )
        return [{key: str(p)} for p in files]
    raise UsageError("input not found", source, "pass an image file, a folder of images or a datalist JSON")


def _array_problem(array: np.ndarray, spatial_dims: int | None) -> str | None:
    """What makes a loaded image unusable for a ``spatial_dims`` model, or None."""
    if array.size == 0:
        return "is empty"
    if not np.isfinite(array).all():
        return "contains NaN or infinite values"
    dims = np.squeeze(array).ndim
    if spatial_dims is not None and dims != spatial_dims and not (spatial_dims == 2 and dims == 3 and array.shape[-1] in (3, 4)):
        return f"is {dims}D but the model is {spatial_dims}D"
    return None


def _problem(path: str, spatial_dims: int | None) -> str | None:
    from monai.transforms import LoadImage

    try:
        array = np.asarray(LoadImage(image_only=True)(path))
    except Exception as err:  # noqa: BLE001 - any reader failure makes the case unusable
        return f"cannot be read ({type(err).__name__}: {first_line(err)[:200]})"
    return _array_problem(array, spatial_dims)


def _fix(problem: str) -> str:
    if "model is" in problem:
        dims = problem.split("is ", 1)[1][0]
        return (f"pass --spatial_dims {dims} to the bundle run (for MONAI Label, pack the bundle with "
                f"--set spatial_dims={dims}), or give {problem[-2]}D images")
    if "NaN" in problem:
        return "replace the NaN voxels (for example with the background value) and run again"
    return "check that the file is a complete NIfTI, MHA or NRRD image (re-export or re-convert it)"


class CheckedLoadImaged:
    """``LoadImaged`` whose failures name the file and the fix: the first step of the bundles'
    ``preprocessing``, which MONAI Label runs on the image of each request.

    A missing path, an unreadable or truncated file, NaN voxels and an image of the wrong
    dimensionality for the model raise :class:`LdmonaiError` (one line, with the path) instead of
    a reader's traceback. MONAI Label 0.8.5 answers any error in a request with HTTP 500; this line
    is what its server log then shows.

    Args:
        keys: image keys to load.
        spatial_dims: the model's dimensionality (2 or 3), checked after loading; None skips the check.
    """

    def __init__(self, keys: str | Sequence[str] = "image", spatial_dims: int | None = None) -> None:
        from monai.transforms import LoadImaged

        self.keys = [keys] if isinstance(keys, str) else list(keys)
        self.spatial_dims = spatial_dims
        self.load = LoadImaged(self.keys, image_only=True)

    def __call__(self, data: dict) -> dict:
        for key in self.keys:
            path = data.get(key)
            if isinstance(path, (str, os.PathLike)) and not Path(path).is_file():
                raise LdmonaiError(f"{key} not found", path or "''", "check the path (for MONAI Label: the image id)")
        try:
            out = self.load(data)
        except Exception as err:  # noqa: BLE001 - whatever the reader says, the user needs the file and a fix
            problem = f"cannot be read ({type(err).__name__}: {first_line(err)[:200]})"
            raise LdmonaiError(f"{'/'.join(self.keys)} {problem}", ", ".join(str(data.get(k)) for k in self.keys),
                               _fix(problem)) from None
        for key in self.keys:
            problem = _array_problem(np.asarray(out[key]), self.spatial_dims)
            if problem:
                raise LdmonaiError(f"{key} {problem}", data.get(key) if isinstance(data.get(key), str) else None,
                                   _fix(problem))
        return out


def inference_cases(
    source: str | os.PathLike,
    output_dir: str | os.PathLike,
    output_postfixes: Sequence[str] = ("seg",),
    output_ext: str = ".nii.gz",
    split: str = "test",
    resume: bool = True,
    key: str = "image",
    spatial_dims: int | None = None,
    fractions: tuple[float, float] | None = None,
    stems: Sequence[str] = ("mr", "cbct"),
) -> list[dict]:
    """The cases still to run, after dropping bad inputs and finished outputs.

    Args:
        source: image file, folder or datalist JSON.
        output_dir: where outputs go; ``skipped_cases.json`` is written there.
        output_postfixes: a case is done when ``<stem>_<postfix><ext>`` exists for all of them
            (``<stem><ext>`` for an empty postfix).
        resume: skip finished cases.
        spatial_dims: skip images of another dimensionality than the model's.
        fractions: (validation, test) fractions that split a SynthRAD folder as training did.
        stems: the image of each SynthRAD patient folder (see :func:`find_images`).

    Raises:
        LdmonaiError: no input at all, or every case is unreadable.
    """
    cases = find_images(source, split, key, fractions, stems)
    output_dir = Path(output_dir)
    todo, skipped, done = [], [], 0
    for case in cases:
        stem = case_stem(case[key])
        if resume and all((output_dir / f"{stem}{'_' + p if p else ''}{output_ext}").exists() for p in output_postfixes):
            done += 1
            continue
        problem = _problem(case[key], spatial_dims)
        if problem:
            skipped.append({"path": case[key], "reason": f"image {problem}", "fix": "fix or remove this file"})
        else:
            todo.append(case)
    atomic_write_json(output_dir / "skipped_cases.json", {"skipped": skipped, "already_done": done, "to_run": len(todo)})
    if not todo and skipped and not done:
        raise LdmonaiError(f"none of the {len(cases)} images can be read", source, f"see {output_dir / 'skipped_cases.json'}")
    return todo
