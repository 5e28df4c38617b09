"""Only what MONAI's engines and handlers lack: iteration functions for the objectives,
atomic resumable checkpoints, and image grids for TensorBoard."""

from ldmonai.engines.checkpoint import (
    BestModelSaver,
    ConfiguredCheckpointLoader,
    ResumableCheckpoint,
    checkpoint_config,
    latest_checkpoint,
    require_checkpoint,
)
from ldmonai.engines.generation import FlowTrainStep, GeneratorTrainStep
from ldmonai.engines.image_grid import SegmentationGridHandler
from ldmonai.engines.learning_check import LossNotFallingWarning
from ldmonai.engines.segmentation import SegmenterTrainStep, loss_terms
from ldmonai.engines.validation import FinalValidationHandler

__all__ = [
    "BestModelSaver",
    "ConfiguredCheckpointLoader",
    "LossNotFallingWarning",
    "checkpoint_config",
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
