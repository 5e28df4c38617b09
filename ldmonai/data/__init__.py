"""Datalists, sample datasets and the checks that keep bad cases out of a run."""

from ldmonai.data.cases import CheckedLoadImaged, find_images, inference_cases
from ldmonai.data.datalist import evaluation_split, label_names, load_datalist, write_datalist
from ldmonai.data.ct_phantom import make_mr_ct_phantoms, shepp_logan_volume
from ldmonai.data.mni_tissue import make_tissue_dataset
from ldmonai.data.spacing import OptionalSpacingd
from ldmonai.data.slice_sets import make_aging_pairs, make_brain_slices, make_natural_slices
from ldmonai.data.synthrad import paired_datalist, synthrad_datalist

__all__ = [
    "CheckedLoadImaged", "find_images", "evaluation_split", "inference_cases", "label_names", "load_datalist", "make_aging_pairs", "make_brain_slices", "make_mr_ct_phantoms", "make_natural_slices",
    "make_tissue_dataset", "OptionalSpacingd", "paired_datalist", "shepp_logan_volume", "synthrad_datalist", "write_datalist",
]
