"""A self-contained copy of a bundle with its settings baked in and its weights in ``models/``.

Tools that read a bundle's ``inference.json`` as it is (MONAI Label's ``monaibundle`` app,
``monai.bundle`` scripts without overrides, the model zoo) cannot be given the command-line
overrides a run used, such as ``--spatial_dims 3``. Packing writes those values into every
config that defines them, so the copy behaves like the run that trained the weights.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

from ldmonai.errors import UsageError

_SKIP = shutil.ignore_patterns("runs", "eval", "data", "__pycache__", "*.pt", "*.ts", ".*")


def _write_json(path: Path, content: Any) -> None:
    # Plain writes: the whole copy is built in a temporary folder and renamed into place.
    path.write_text(json.dumps(content, indent=4) + "\n")


def _parse(value: Any) -> Any:
    """Command-line text as JSON where it parses (``3``, ``[1, 2]``, ``true``), else the text itself."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def pack_bundle(
    source: str | os.PathLike,
    dest: str | os.PathLike,
    overrides: Mapping[str, Any] | None = None,
    weights: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Path:
    """Copy bundle ``source`` to ``dest`` with ``overrides`` applied and ``weights`` as ``models/model.pt``.

    Args:
        source: a bundle folder (``configs/metadata.json`` inside).
        dest: the new bundle folder; it must not exist unless ``overwrite``.
        overrides: top-level config ids and values, for example ``{"spatial_dims": 3}``.
            Each is written into every config file that defines it; an id that no
            config defines is an error, since it would silently do nothing.
        weights: a state dict file to install as ``models/model.pt``.
        overwrite: replace an existing ``dest``.

    Returns:
        ``dest``. ``metadata.json``'s ``spatial_shape`` entries follow a ``spatial_dims``
        override, so tools that size test inputs from it use the right rank.
    """
    source, dest = Path(source), Path(dest)
    if not (source / "configs" / "metadata.json").is_file():
        raise UsageError("not a MONAI bundle (no configs/metadata.json)", source, "pass a folder under bundles/")
    if dest.exists() and not overwrite:
        raise UsageError("destination exists", dest, "choose a new folder or pass --overwrite")
    if weights is not None and not Path(weights).is_file():
        raise UsageError("weights file not found", weights, "train with the bundle's train config first, or pass a shipped bundles/<name>/models/demo_tiny.pt")
    overrides = {k: _parse(v) for k, v in (overrides or {}).items()}

    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp, ignore=_SKIP)
    used: set[str] = set()
    for path in sorted((tmp / "configs").glob("*.json")):
        if path.name == "metadata.json":
            continue
        config = json.loads(path.read_text())
        hits = {k: v for k, v in overrides.items() if k in config}
        if hits:
            config.update(hits)
            _write_json(path, config)
            used |= hits.keys()
    unused = sorted(set(overrides) - used)
    if unused:
        shutil.rmtree(tmp)
        raise UsageError(f"no config in the bundle defines {unused}", source / "configs", "check the spelling of the setting")

    if "spatial_dims" in overrides:
        meta_path = tmp / "configs" / "metadata.json"
        meta = json.loads(meta_path.read_text())
        for part in ("inputs", "outputs"):
            for spec in meta["network_data_format"][part].values():
                shape = spec["spatial_shape"]
                spec["spatial_shape"] = [shape[0]] * int(overrides["spatial_dims"])
        _write_json(meta_path, meta)
    if weights is not None:
        (tmp / "models").mkdir(exist_ok=True)
        shutil.copyfile(weights, tmp / "models" / "model.pt")
    # The old copy goes only once the new one is complete, so a refused pack leaves it intact.
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return dest
