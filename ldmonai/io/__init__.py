"""Small I/O helpers shared by every writer in the toolkit.

Names resolve lazily (PEP 562): ``ldmonai.io.atomic`` is needed by the DICOM converter, which
must not pay for importing torch and MONAI through the writers and previews.
"""

from importlib import import_module

_HOME = {
    "TMP_MARK": "atomic", "atomic_path": "atomic", "atomic_write_json": "atomic", "remove_stale_temps": "atomic",
    "case_name_formatter": "names",
    "SavePreviewd": "preview", "SaveTranslationPreviewd": "preview", "save_png": "preview",
    "segmentation_panel": "preview",
    "AtomicITKWriter": "writers", "AtomicNibabelWriter": "writers",
}

__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'ldmonai.io' has no attribute {name!r}")
    value = getattr(import_module(f"ldmonai.io.{_HOME[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))
