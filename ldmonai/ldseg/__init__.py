"""LDSeg: latent diffusion segmentation (Zaman et al.), its baselines, loss, inferer and transforms."""

from ldmonai.ldseg.baselines import DeterministicSegmenter, PixelDiffusionSegmenter
from ldmonai.ldseg.image_encoder import ImageEncoder
from ldmonai.ldseg.inferer import SegmenterInferer
from ldmonai.ldseg.label_autoencoder import LabelAutoencoder
from ldmonai.ldseg.loss import SegmentationLoss
from ldmonai.ldseg.model import LDSeg
from ldmonai.ldseg.segmenter import Segmenter
from ldmonai.ldseg.transforms import CheckSegmentationPaird, SplitUncertaintyd, UncertaintySummaryd
from ldmonai.ldseg.uncertainty import stack_maps, uncertainty_maps

__all__ = [
    "CheckSegmentationPaird",
    "DeterministicSegmenter",
    "ImageEncoder",
    "LDSeg",
    "LabelAutoencoder",
    "PixelDiffusionSegmenter",
    "SegmentationLoss",
    "Segmenter",
    "SegmenterInferer",
    "SplitUncertaintyd",
    "UncertaintySummaryd",
    "stack_maps",
    "uncertainty_maps",
]
