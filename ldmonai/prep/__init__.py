"""Preprocessing: DICOM conversion, and ITK pipelines for skull-stripping, registration,
N4, resampling, intensity normalisation and slice extraction.

Every step is a plain function on SimpleITK images, a pipeline step (``ldmonai.prep.steps``,
``ldmonai prep run``) and a MONAI dictionary transform (``ldmonai.prep.transforms``).
"""

from ldmonai.prep.dicom import ConversionReport, convert_series, convert_tree

__all__ = ["ConversionReport", "convert_series", "convert_tree"]
