"""Preprocessing for the three model families: DICOM conversion first, ITK pipelines next.

Entry points are also reachable from the command line as ``ldmonai prep ...``.
"""

from ldmonai.prep.dicom import ConversionReport, convert_series, convert_tree

__all__ = ["ConversionReport", "convert_series", "convert_tree"]
