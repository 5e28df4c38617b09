"""DICOM to NIfTI conversion on the dcm2niix engine (see :mod:`.convert`)."""

from ldmonai.prep.dicom.convert import REPORT_NAME, ConversionReport, convert_series, convert_tree
from ldmonai.prep.dicom.naming import DEFAULT_TEMPLATE, render_name, sanitize_component

__all__ = ["DEFAULT_TEMPLATE", "REPORT_NAME", "ConversionReport", "convert_series", "convert_tree",
           "render_name", "sanitize_component"]
