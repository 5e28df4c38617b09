"""Output names from DICOM tags, sanitised so that no tag value can escape the output folder.

A template such as ``{PatientID}/{SeriesNumber}_{SeriesDescription}`` is split on ``/``
*before* tag values are substituted, so a ``/`` or ``..`` inside a tag never becomes a path
separator. Each component keeps only ``[A-Za-z0-9._=+-]``, loses leading dots, and is
capped in length; the final path is checked to lie inside the output folder.
"""

from __future__ import annotations

import os
import re
import string
from pathlib import Path

from ldmonai.errors import LdmonaiError, UsageError

DEFAULT_TEMPLATE = "{PatientID}/{SeriesNumber}_{SeriesDescription}"
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]+")
_UNSAFE_LITERAL = re.compile(r"[^A-Za-z0-9._=+%-]+")  # a template's own text may hold dcm2niix fields
MAX_COMPONENT = 120


def sanitize_component(text) -> str:
    """One safe path component from arbitrary text (never empty, never '.' or '..')."""
    cleaned = _UNSAFE.sub("_", str(text if text is not None else ""))
    cleaned = re.sub(r"_+", "_", cleaned).strip("._- ")
    cleaned = cleaned[:MAX_COMPONENT].rstrip("._- ")
    return cleaned or "unknown"


def template_fields(template: str) -> list[str]:
    """Field names of ``template``; raises :class:`LdmonaiError` for an unusable template."""
    if not template or template.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", template):
        raise UsageError(f"name template {template!r} must be a relative path",
                           fix="use fields like {PatientID}/{SeriesNumber}_{SeriesDescription}")
    fields = []
    try:
        for part in template.split("/"):
            if part in ("", ".", ".."):
                raise UsageError(f"name template {template!r} has an empty, '.' or '..' component",
                                   fix="use fields like {PatientID}/{SeriesNumber}_{SeriesDescription}")
            for _, name, spec, conv in string.Formatter().parse(part):
                if name is None:
                    continue
                if not name.isidentifier() or spec or conv:
                    raise UsageError(f"name template field {{{name}}} must be a plain DICOM keyword",
                                       fix="write fields as {Keyword}, without format specs")
                fields.append(name)
    except ValueError as exc:
        raise UsageError(f"name template {template!r} is malformed ({exc})",
                           fix="balance the braces, e.g. {PatientID}/{SeriesNumber}") from None
    return fields


def render_name(template: str, tags: dict, suffix: str = "") -> str:
    """Relative output path (no extension) for a series with ``tags``.

    ``{Keyword}`` fields are filled from ``tags``, each value sanitised on its own (so a tag can
    never bring a ``/``, ``..`` or a dcm2niix ``%`` field); the template's literal text keeps
    ``%``, which leaves dcm2niix's own fields (``%p``, ``%s``, ...) for dcm2niix to fill.
    """
    template_fields(template)
    parts = []
    for part in template.split("/"):
        text = ""
        for literal, name, _, _ in string.Formatter().parse(part):
            text += _UNSAFE_LITERAL.sub("_", literal)
            if name:
                value = tags.get(name)
                if isinstance(value, tuple):
                    value = "_".join(str(v) for v in value)
                text += sanitize_component("unknown" if value in (None, "") else value)
        parts.append(text.strip("._- ")[:MAX_COMPONENT] or "unknown")
    if suffix:
        parts[-1] = sanitize_component(parts[-1] + suffix)
    return "/".join(parts)


def inside(out_dir: str | os.PathLike, relative: str) -> Path:
    """``out_dir / relative``, refusing anything that would resolve outside ``out_dir``."""
    root = Path(out_dir).resolve()
    target = (root / relative).resolve()
    if os.path.commonpath([root, target]) != str(root):
        raise LdmonaiError(f"output name {relative!r} would leave the output folder", out_dir,
                           "this is a bug in name sanitising; please report it")
    return target
