"""GDM: generative drifting for conditional 3D medical image generation (Li et al., 2026).

A one-step generator (a MONAI ``UNet``) is trained with an attractive-repulsive drifting
loss in the feature bank of a frozen encoder plus a masked HU fidelity loss, their
gradients coordinated on the output. Two tasks: MRI-to-CT synthesis and sparse-view CT.
"""

from ldmonai.gdm.baselines import IntensityMapping
from ldmonai.gdm.ct_physics import Projector, attenuation_to_hu, hu_to_attenuation
from ldmonai.gdm.drift_field import DriftingLoss, drift_field, normalize_features
from ldmonai.gdm.feature_bank import AstraInput, FeatureBank, RandomMultiScaleEncoder, StagedEncoder, astra_encoder, make_encoder
from ldmonai.gdm.grad_coordination import coordinate_gradients
from ldmonai.gdm.hu import HU_MAX, HU_MIN, hu_to_unit, unit_to_hu
from ldmonai.gdm.objective import FeatureDriftLoss, GDMObjective, masked_l1_hu
from ldmonai.gdm.rflow import RFlowTranslator
from ldmonai.gdm.transforms import CheckCTPaird, DataConsistencyd, SinogramFBPd, SparseViewd, body_mask

__all__ = [
    "AstraInput", "CheckCTPaird", "DataConsistencyd", "DriftingLoss", "FeatureBank", "FeatureDriftLoss", "GDMObjective", "HU_MAX", "HU_MIN",
    "IntensityMapping", "Projector", "RFlowTranslator", "RandomMultiScaleEncoder", "SinogramFBPd", "SparseViewd", "StagedEncoder",
    "astra_encoder", "make_encoder", "attenuation_to_hu", "body_mask", "coordinate_gradients", "drift_field", "hu_to_attenuation",
    "hu_to_unit", "masked_l1_hu", "normalize_features", "unit_to_hu",
]
