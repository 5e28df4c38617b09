"""Small I/O helpers shared by every writer in the toolkit."""

from ldmonai.io.atomic import TMP_MARK, atomic_path, atomic_write_json, remove_stale_temps
from ldmonai.io.names import case_name_formatter
from ldmonai.io.preview import SavePreviewd, SaveTranslationPreviewd, save_png, segmentation_panel
from ldmonai.io.writers import AtomicITKWriter, AtomicNibabelWriter

__all__ = [
    "TMP_MARK",
    "AtomicITKWriter",
    "AtomicNibabelWriter",
    "SavePreviewd",
    "SaveTranslationPreviewd",
    "case_name_formatter",
    "atomic_path",
    "atomic_write_json",
    "remove_stale_temps",
    "save_png",
    "segmentation_panel",
]
