"""Small I/O helpers shared by every writer in the toolkit."""

from ldmonai.io.atomic import TMP_MARK, atomic_path, atomic_write_json, remove_stale_temps

__all__ = ["TMP_MARK", "atomic_path", "atomic_write_json", "remove_stale_temps"]
