"""Only what MONAI's engines and handlers lack: iteration functions for the objectives,
atomic resumable checkpoints, and image grids for TensorBoard."""

from ldmonai.engines.checkpoint import BestModelSaver, ResumableCheckpoint, latest_checkpoint, require_checkpoint
from ldmonai.engines.generation import FlowTrainStep, GeneratorTrainStep
from ldmonai.engines.image_grid import SegmentationGridHandler
from ldmonai.engines.segmentation import SegmenterTrainStep, loss_terms
from ldmonai.engines.validation import FinalValidationHandler

__all__ = [
    "BestModelSaver",
    "FinalValidationHandler",
    "FlowTrainStep",
    "GeneratorTrainStep",
    "ResumableCheckpoint",
    "SegmentationGridHandler",
    "SegmenterTrainStep",
    "latest_checkpoint",
    "loss_terms",
    "require_checkpoint",
]
