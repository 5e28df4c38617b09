"""Datalists, sample datasets and the checks that keep bad cases out of a run."""

from ldmonai.data.cases import find_images, inference_cases
from ldmonai.data.datalist import load_datalist
from ldmonai.data.mni_tissue import make_tissue_dataset

__all__ = ["find_images", "inference_cases", "load_datalist", "make_tissue_dataset"]
